"""The image scan: readability, modes, conversion, exact and near duplicates, on generated files."""

from __future__ import annotations

import itertools
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tunesmith.data import image_scan
from tunesmith.data.image_scan import (
    confirm_near_pairs,
    exact_duplicates,
    near_duplicates,
    open_image,
    scan_images,
    to_mode,
)


def picture(rng: np.random.Generator, side: int = 96) -> Image.Image:
    """A smooth random RGB picture: a 12x12 grid of random colours, upsampled, with mild grain.

    Like a photograph it has its energy at low frequencies, so resizing and recompression leave
    it recognisable (white noise would not be). The grid is fine enough to give every one of the
    8x8 frequencies the hash keeps some energy: with a 6x6 grid the highest of them held only
    grain, and their bits flipped under any change.
    """
    grid = Image.fromarray(rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8))
    smooth = np.asarray(grid.resize((side, side), Image.Resampling.BICUBIC), dtype=np.float64)
    grain = rng.normal(0.0, 4.0, size=smooth.shape)
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))


def distance(a: int, b: int) -> int:
    return int(np.bitwise_count(np.uint64(a) ^ np.uint64(b)))


def save(image: Image.Image, path: Path, **options: Any) -> str:
    image.save(path, **options)
    return str(path)


# ----------------------------------------------------------------------------------------------
# readability, modes and sizes


@pytest.fixture
def zoo(tmp_path: Path) -> dict[str, str]:
    """One file of each kind the scan must tell apart, keyed by what it is."""
    rng = np.random.default_rng(0)
    rgb = picture(rng, 64)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(
        Image.fromarray(
            np.where(np.arange(64) < 32, 0, 255).astype(np.uint8)[None].repeat(64, axis=0)
        )
    )
    depth16 = Image.fromarray(rng.integers(0, 4001, size=(40, 50)).astype(np.uint16))
    files = {
        "rgb": save(rgb, tmp_path / "rgb.png"),
        "gray": save(rgb.convert("L").resize((70, 30)), tmp_path / "gray.png"),
        "rgba": save(rgba, tmp_path / "rgba.png"),
        "palette": save(rgb.convert("P"), tmp_path / "palette.png"),
        "cmyk": save(rgb.convert("CMYK").resize((33, 21)), tmp_path / "cmyk.jpg", quality=90),
        "depth16": save(depth16, tmp_path / "depth16.png"),
        "bilevel": save(rgb.convert("1"), tmp_path / "bilevel.png"),
        "float": save(Image.fromarray(rng.random((12, 13), dtype=np.float32)), tmp_path / "f.tif"),
    }
    noise = Image.fromarray(rng.integers(0, 256, size=(200, 150, 3), dtype=np.uint8))
    for name, suffix in (("truncated png", ".png"), ("truncated jpeg", ".jpg")):
        whole = tmp_path / f"whole{suffix}"
        noise.save(whole)
        data = whole.read_bytes()
        (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) * 6 // 10])
        files[name] = str(tmp_path / f"cut{suffix}")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "random.png").write_bytes(rng.bytes(3000))
    (tmp_path / "text.png").write_text("label,path\ncat,cat.png\n")
    files |= {name: str(tmp_path / f"{name}.png") for name in ("empty", "random", "text")}
    files["missing"] = str(tmp_path / "missing.png")
    return files


READABLE = {
    # name: (mode as stored, width, height)
    "rgb": ("RGB", 64, 64),
    "gray": ("L", 70, 30),
    "rgba": ("RGBA", 64, 64),
    "palette": ("P", 64, 64),
    "cmyk": ("CMYK", 33, 21),
    "depth16": ("I;16", 50, 40),
    "bilevel": ("1", 64, 64),
    "float": ("F", 13, 12),
}
UNREADABLE = {
    "truncated png": "image file is truncated",
    "truncated jpeg": "image file is truncated",
    "empty": "empty file (0 bytes)",
    "random": "cannot identify image file",
    "text": "cannot identify image file",
    "missing": "No such file or directory",
}


def test_scan_tells_readable_files_from_broken_ones_and_records_mode_and_size(
    zoo: dict[str, str],
) -> None:
    names = list(zoo)
    scan = scan_images([zoo[name] for name in names])

    assert scan.paths == [zoo[name] for name in names]
    assert scan.readable.dtype == bool
    assert dict(zip(names, scan.readable.tolist(), strict=True)) == {
        name: name in READABLE for name in names
    }
    for i, name in enumerate(names):
        if name in READABLE:
            facts = (scan.modes[i], int(scan.widths[i]), int(scan.heights[i]))
            assert (facts, scan.errors[i]) == (READABLE[name], None), name
            assert scan.content_hash[i] != 0 and scan.phash[i] != 0, name
        else:
            assert UNREADABLE[name] in (scan.errors[i] or ""), (name, scan.errors[i])
            assert scan.modes[i] is None, name
            blank = (scan.widths[i], scan.heights[i], scan.content_hash[i], scan.phash[i])
            assert blank == (0, 0, 0, 0), name
    assert scan.widths.dtype == np.int32 and scan.content_hash.dtype == np.uint64
    assert scan.phash.dtype == np.uint64


def test_a_decompression_bomb_is_unreadable_without_being_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save(Image.new("RGB", (64, 64)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels is over twice this

    scan = scan_images([path])

    assert not scan.readable[0]
    assert "decompression bomb" in (scan.errors[0] or "")


def test_progress_counts_images_and_a_process_pool_gives_the_same_facts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    paths = [save(picture(rng, 32), tmp_path / f"{i}.png") for i in range(150)]
    paths[7] = str(tmp_path / "missing.png")
    pools: list[int] = []

    class CountedPool(ProcessPoolExecutor):
        def __init__(self, max_workers: int, **options: Any) -> None:
            pools.append(max_workers)
            super().__init__(max_workers, **options)

    monkeypatch.setattr(image_scan, "ProcessPoolExecutor", CountedPool)
    alone = scan_images(paths)
    assert pools == []  # 150 images are too few to fork for
    monkeypatch.setattr(image_scan, "MIN_IMAGES_FOR_POOL", 100)
    seen: list[int] = []
    pooled = scan_images(paths, workers=2, on_progress=seen.append)

    assert pools == [2]
    assert seen == [64, 128, 150]
    assert pooled.readable.sum() == 149 and not pooled.readable[7]
    for field in ("readable", "widths", "heights", "content_hash", "phash"):
        assert np.array_equal(getattr(pooled, field), getattr(alone, field)), field
    assert pooled.errors == alone.errors and pooled.modes == alone.modes


# ----------------------------------------------------------------------------------------------
# conversion


def test_16_bit_images_are_scaled_by_their_range_not_clipped(zoo: dict[str, str]) -> None:
    with Image.open(zoo["depth16"]) as image:
        image.load()
        source = np.asarray(image).astype(np.int64).ravel()
        clipped = np.asarray(image.convert("L"))
        converted = to_mode(image, "RGB")

    pixels = np.asarray(converted)
    assert converted.mode == "RGB" and converted.size == (50, 40)
    assert np.array_equal(pixels[..., 0], pixels[..., 1])
    gray = pixels[..., 0].astype(np.int64).ravel()
    # Pillow's own conversion turns almost every pixel of a 0..4000 image white ...
    assert (clipped == 255).mean() > 0.9
    # ... the scaled one spans 0..255, is not saturated, and keeps the order of the intensities.
    assert (gray.min(), gray.max()) == (0, 255)
    assert (gray == 255).mean() < 0.01 and 100 < gray.mean() < 155
    assert np.all(np.diff(gray[np.argsort(source, kind="stable")]) >= 0)
    expected = np.rint((source - source.min()) * 255 / (source.max() - source.min()))
    assert np.abs(gray - expected).max() == 0


def test_float_and_constant_images_are_scaled_without_dividing_by_zero() -> None:
    ramp = Image.fromarray(np.linspace(-1.0, 3.0, 12, dtype=np.float32).reshape(3, 4))
    assert np.asarray(to_mode(ramp, "L")).ravel().tolist() == [
        round(i * 255 / 11) for i in range(12)
    ]
    flat = Image.fromarray(np.full((3, 4), 1234, dtype=np.uint16))
    assert np.asarray(to_mode(flat, "L")).max() == 0


def test_a_16_bit_key_colour_is_transparent_and_outside_the_stretch(tmp_path: Path) -> None:
    """A 16-bit grayscale PNG's tRNS key colour: its pixels are white as a viewer shows them, not
    the black of the lowest value, and the picture is stretched over the other pixels' range."""
    values = np.full((4, 6), 40_000, dtype=np.uint16)
    values[1:3, 1:3] = 1_000
    values[0, :2] = 5  # the key colour
    Image.fromarray(values).save(path := tmp_path / "key.png", transparency=5)
    gray = np.asarray(open_image(path, "L"))
    expected = np.where(values == 40_000, 255, 0)
    expected[0, :2] = 255
    assert gray.tolist() == expected.tolist()
    rgba = np.asarray(open_image(path, "RGBA"))
    assert rgba[0, 0, 3] == 0 and rgba[0, 2, 3] == 255 and rgba[1, 1].tolist() == [0, 0, 0, 255]


def test_transparent_pixels_are_composited_on_white() -> None:
    # Left half fully transparent black, right half opaque red.
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)
    rgba[:, 3:] = (200, 0, 0, 255)
    image = Image.fromarray(rgba)
    rgb = np.asarray(to_mode(image, "RGB"))
    assert np.all(rgb[:, :3] == 255) and np.all(rgb[:, 3:] == (200, 0, 0))
    # Pillow's convert would show the transparent half black.
    assert np.all(np.asarray(image.convert("RGB"))[:, :3] == 0)

    palette = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 10, 20, 30])
    palette.info["transparency"] = 0
    assert np.asarray(to_mode(palette, "RGB")).tolist() == [
        [[255, 255, 255], [10, 20, 30]],
        [[10, 20, 30], [255, 255, 255]],
    ]
    half = Image.fromarray(
        np.dstack([np.full((2, 2), 40), [[0, 255], [128, 255]]]).astype(np.uint8), mode="LA"
    )
    assert np.asarray(to_mode(half, "L")).tolist() == [[255, 40], [147, 40]]
    # A mode with alpha keeps it.
    assert to_mode(image, "RGBA").getpixel((0, 0)) == (0, 0, 0, 0)


def test_other_modes_expand_to_rgb(zoo: dict[str, str]) -> None:
    bilevel = open_image(zoo["bilevel"])
    assert bilevel.mode == "RGB" and set(np.unique(np.asarray(bilevel))) <= {0, 255}
    with Image.open(zoo["cmyk"]) as cmyk:
        assert np.array_equal(np.asarray(open_image(zoo["cmyk"])), np.asarray(cmyk.convert("RGB")))
    gray = open_image(zoo["gray"])
    assert gray.mode == "RGB" and gray.size == (70, 30)
    assert np.array_equal(np.asarray(gray)[..., 2], np.asarray(Image.open(zoo["gray"])))
    assert open_image(zoo["depth16"], "L").mode == "L"
    with pytest.raises(OSError, match="truncated"):
        open_image(zoo["truncated png"])


# ----------------------------------------------------------------------------------------------
# exact duplicates


def test_the_same_pixels_saved_differently_share_a_content_hash(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    image = picture(rng, 48)
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "exported again")
    changed = image.copy()
    changed.putpixel((10, 10), tuple(255 - v for v in image.getpixel((10, 10))))  # type: ignore[union-attr]
    paths = [
        save(image, tmp_path / "fast.png", compress_level=1),
        save(image, tmp_path / "small.png", compress_level=9, pnginfo=text),
        save(changed, tmp_path / "changed.png"),
        save(image.convert("L"), tmp_path / "gray.png"),
        save(image.convert("L").convert("RGB"), tmp_path / "gray-as-rgb.png"),
        str(tmp_path / "missing-a.png"),
        str(tmp_path / "missing-b.png"),
    ]
    assert Path(paths[0]).read_bytes() != Path(paths[1]).read_bytes()

    scan = scan_images(paths)

    # Unreadable files share hash 0 and are not duplicates of each other.
    assert exact_duplicates(scan.content_hash).tolist() == [[0, 1]]
    assert len(set(scan.content_hash[:5].tolist())) == 4


def test_exact_duplicate_pairs_follow_the_index_conventions() -> None:
    hashes = np.array([5, 0, 5, 0, 7, 5, 9], dtype=np.uint64)
    other = np.array([7, 0, 5, 8, 5], dtype=np.uint64)

    assert exact_duplicates(hashes).tolist() == [[0, 2], [0, 5], [2, 5]]
    across = [[0, 2], [0, 4], [2, 2], [2, 4], [4, 0], [5, 2], [5, 4]]
    assert exact_duplicates(hashes, other).tolist() == across
    assert exact_duplicates(np.array([], dtype=np.uint64)).shape == (0, 2)


# ----------------------------------------------------------------------------------------------
# near duplicates


def perturbed(image: Image.Image, how: str, path: Path) -> str:
    """Save a copy of `image` changed the way copies in the wild are changed."""
    if how == "resized":
        return save(
            image.resize((image.width * 3 // 4, image.height * 3 // 4)), path.with_suffix(".png")
        )
    if how == "brighter":
        pixels = np.asarray(image, dtype=np.float64) * 1.05 + 5
        return save(
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), path.with_suffix(".png")
        )
    assert how == "jpeg"
    return save(image, path.with_suffix(".jpg"), quality=70)


def test_resized_brightened_and_recompressed_copies_are_near_duplicates(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    source = picture(rng, 128)
    ways = ["resized", "brighter", "jpeg"]
    paths = [save(source, tmp_path / "source.png")]
    paths += [perturbed(source, how, tmp_path / how) for how in ways]
    paths += [save(picture(rng, 128), tmp_path / f"other{i}.png") for i in range(5)]

    scan = scan_images(paths)
    hashes = scan.phash.tolist()

    copies = {how: distance(hashes[0], hashes[1 + k]) for k, how in enumerate(ways)}
    assert max(copies.values()) <= 4, copies
    unrelated = [distance(a, b) for a, b in itertools.combinations([hashes[0], *hashes[4:]], 2)]
    assert min(unrelated) >= 16, unrelated
    source_and_copies = [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    assert near_duplicates(scan.phash, valid=scan.readable).tolist() == source_and_copies


def test_near_duplicate_pairs_follow_the_index_conventions() -> None:
    base, far = 0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210
    hashes = np.array([base, base ^ 0b1, far, base ^ 0b11111, base], dtype=np.uint64)
    other = np.array([far ^ 0b100, base ^ 0b1111, base], dtype=np.uint64)

    # Distances: 0-1 one bit, 0-3 five, 0-4 none, 1-3 four, 1-4 one, 3-4 five; 2 is far from all.
    assert near_duplicates(hashes).tolist() == [[0, 1], [0, 4], [1, 3], [1, 4]]
    within_five = [[0, 1], [0, 3], [0, 4], [1, 3], [1, 4], [3, 4]]
    assert near_duplicates(hashes, max_distance=5).tolist() == within_five
    across = [[0, 1], [0, 2], [1, 1], [1, 2], [2, 0], [3, 1], [4, 1], [4, 2]]
    assert near_duplicates(hashes, other).tolist() == across
    valid = np.array([True, True, True, True, False])
    other_valid = np.array([True, False, True])
    masked = near_duplicates(hashes, other, valid=valid, other_valid=other_valid)
    assert masked.tolist() == [[0, 2], [1, 2], [2, 0]]
    assert near_duplicates(hashes, valid=valid).tolist() == [[0, 1], [1, 3]]
    with pytest.raises(ValueError, match="valid mask"):
        near_duplicates(hashes, valid=valid[:3])


def test_blocked_comparison_matches_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    hashes = rng.integers(0, 2**63, size=300, dtype=np.uint64)
    # Plant close hashes: copies of random rows with 0-5 random bits flipped.
    flips = [
        sum(1 << int(b) for b in rng.choice(64, size=rng.integers(0, 6), replace=False))
        for _ in range(60)
    ]
    hashes[240:] = hashes[rng.choice(240, size=60)] ^ np.array(flips, dtype=np.uint64)
    other = hashes[rng.permutation(300)[:170]] ^ np.uint64(0b10)
    within = np.bitwise_count(hashes[:, None] ^ hashes[None, :]) <= 4
    across = np.bitwise_count(hashes[:, None] ^ other[None, :]) <= 4
    expected_within = np.argwhere(np.triu(within, k=1)).tolist()
    expected_across = np.argwhere(across).tolist()
    assert len(expected_within) >= 40 and len(expected_across) >= 100

    for cells in (1, 7 * 300, 1 << 22):
        monkeypatch.setattr(image_scan, "PAIR_BLOCK_CELLS", cells)
        assert near_duplicates(hashes).tolist() == expected_within, cells
        assert near_duplicates(hashes, other).tolist() == expected_across, cells


def test_planted_near_duplicates_are_found_and_nothing_else(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    originals = [picture(rng, 64) for _ in range(200)]
    train = [save(image, tmp_path / "train" / f"{i}.png") for i, image in enumerate(originals)]
    sources = rng.choice(200, size=20, replace=False)
    ways = ["resized", "brighter", "jpeg"]
    test = [
        perturbed(originals[s], ways[k % 3], tmp_path / "test" / f"copy{k}")
        for k, s in enumerate(sources)
    ]
    test += [save(picture(rng, 64), tmp_path / "test" / f"new{i}.png") for i in range(50)]

    train_scan, test_scan = scan_images(train), scan_images(test)
    found = near_duplicates(
        train_scan.phash, test_scan.phash, valid=train_scan.readable, other_valid=test_scan.readable
    )

    planted = {(int(s), k) for k, s in enumerate(sources)}
    pairs = {(int(i), int(j)) for i, j in found}
    recall = len(pairs & planted) / len(planted)
    precision = len(pairs & planted) / max(1, len(pairs))
    assert pairs == planted, f"recall {recall:.2f}, precision {precision:.2f}"
    assert len(found) == len(pairs)
    assert near_duplicates(train_scan.phash, valid=train_scan.readable).shape == (0, 2)
    assert exact_duplicates(train_scan.content_hash, test_scan.content_hash).shape == (0, 2)


def test_confirmation_keeps_copies_and_drops_look_alikes(tmp_path: Path) -> None:
    """Candidates from the hash are re-checked on pixels: a copy survives, a different picture
    with the same coarse layout (the same grid, other grain and a shifted colour) does not."""
    rng = np.random.default_rng(5)
    source = picture(rng, 96)
    paths = [save(source, tmp_path / "source.png")]
    paths += [perturbed(source, how, tmp_path / how) for how in ("resized", "brighter", "jpeg")]
    # A look-alike: the same picture mirrored left to right keeps the colours but not the pixels.
    paths.append(save(source.transpose(Image.Transpose.FLIP_LEFT_RIGHT), tmp_path / "mirror.png"))
    candidates = np.array([[0, 1], [0, 2], [0, 3], [0, 4]])
    kept = confirm_near_pairs(paths, None, candidates).tolist()
    assert kept == [[0, 1], [0, 2], [0, 3]]
    # Across two sets the second index reads the other list.
    assert confirm_near_pairs(paths[:1], paths[1:], np.array([[0, 0], [0, 3]])).tolist() == [[0, 0]]
    assert confirm_near_pairs(paths, None, np.empty((0, 2), np.int64)).shape == (0, 2)


@pytest.mark.parametrize(("orientation", "stored_as"), [  # how a camera stores what it shows
    (3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90),
    (8, Image.Transpose.ROTATE_270), (2, Image.Transpose.FLIP_LEFT_RIGHT)])
def test_a_photo_is_read_as_its_exif_orientation_shows_it(
    orientation: int, stored_as: Image.Transpose, tmp_path: Path
) -> None:
    """A phone's photo stores the sensor's pixels and an EXIF tag saying how to turn them: read
    as stored, an upright training photo predicted as upside down and was no duplicate of
    itself."""
    shown = Image.fromarray(np.kron(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20,
                                    np.ones((8, 8), dtype=np.uint8))).convert("RGB")  # 24 x 32
    plain = tmp_path / "plain.png"
    shown.save(plain)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = tmp_path / "stored.png"
    shown.transpose(stored_as).save(stored, exif=exif.tobytes())
    read = open_image(stored)
    assert read.size == shown.size and np.array_equal(np.asarray(read), np.asarray(shown))
    scans = scan_images([str(plain), str(stored)])
    assert (scans.widths.tolist(), scans.heights.tolist()) == ([32, 32], [24, 24])
    assert scans.content_hash[0] == scans.content_hash[1]  # the same picture: a duplicate


def test_the_pixel_baseline_and_the_report_thumbnails_decode_as_the_model_does(
    zoo: dict[str, str], tmp_path: Path
) -> None:
    """Both converted with Pillow's own `convert`: a 16-bit scan came out white (the pixel
    baseline scored chance on 16-bit digits, every thumbnail blank) and transparent pixels
    showed the colour under them."""
    import base64
    import io

    from tunesmith.evaluate.baselines import PIXELS, pixels
    from tunesmith.report.html import _thumbnail

    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[:, 8:] = (200, 0, 0, 255)
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    paths = [zoo["depth16"], str(tmp_path / "alpha.png")]
    rows = pixels(paths)
    for row, path in zip(rows, paths, strict=True):
        seen = open_image(path, "RGB").resize((PIXELS, PIXELS), Image.Resampling.BILINEAR)
        assert np.array_equal(row, np.asarray(seen, dtype=np.float32).reshape(-1) / 255.0)
    assert rows[0].mean() < 0.8 and rows[1][: 3 * 4].min() == 1.0  # not white; alpha on white
    for path in paths:
        shown = _thumbnail(Path(path))
        data = base64.b64decode(shown.split("base64,")[1].split('"')[0])
        thumb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert thumb.min() < thumb.max()  # a picture, not a blank square
    assert "(unreadable)" in _thumbnail(Path(zoo["truncated png"]))
