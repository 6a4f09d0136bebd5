"""Check every image of a dataset before training: can it be decoded, what is it, is it a copy.

`scan_images` decodes each file fully (a truncated file only fails when its last rows are read),
records its mode and size, and computes two 64-bit hashes: an exact one of the decoded pixels and
a perceptual one (pHash) that survives resizing, mild brightness changes and JPEG recompression.
`exact_duplicates` and `near_duplicates` turn the hashes into index pairs, within one set or
between two (train against test: leakage).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# What Pillow raises for a file it cannot decode. Besides the documented OSError family, malformed
# files reach its plugins' parsing code, which can fail with the struct, index and key errors of
# that code; any of them means "this file is unreadable", not "the scan is broken".
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    UnidentifiedImageError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    ZeroDivisionError,
    Image.DecompressionBombError,
)

HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "PA"})
# Modes that every target mode converts from directly; the others go through RGB first.
BASE_MODES = frozenset({"1", "L", "RGB"}) | ALPHA_MODES

# Below this many images (~0.5 s of work) forking a pool is not worth its ~40 ms and its risks;
# tests and small datasets run in the calling process.
MIN_IMAGES_FOR_POOL = 512
NEAR_MIN_CORRELATION = 0.98  # of 32x32 grayscale thumbnails, to confirm a hash match
# Images per task: progress is reported per chunk, and tasks of this size make the inter-process
# traffic (paths out, a few numbers back) negligible.
CHUNK = 64

# The side of the grayscale thumbnail the perceptual hash is computed from, and of the block of
# its lowest DCT frequencies that becomes the 64 bits.
PHASH_SIDE = 32
PHASH_BLOCK = 8

# near_duplicates compares a block of rows against all columns at once; this many uint64 cells
# (32 MiB) bounds the memory that takes, whatever the sizes of the two sets.
PAIR_BLOCK_CELLS = 1 << 22
EMPTY_PATH = "the image path cell is empty"


@dataclass(frozen=True)
class ImageScan:
    """Per-image facts, index-aligned with the paths scanned."""

    paths: list[str]
    readable: np.ndarray  # bool
    errors: list[str | None]  # the decoder's message for the unreadable ones
    modes: list[str | None]  # Pillow's mode as stored ("RGB", "L", "I;16", "CMYK", ...)
    widths: np.ndarray  # int32, 0 when unreadable
    heights: np.ndarray  # int32, 0 when unreadable
    content_hash: np.ndarray  # uint64 of the decoded pixels, mode and size; 0 when unreadable
    phash: np.ndarray  # uint64 perceptual hash of the grayscale picture; 0 when unreadable

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True)
class _Facts:
    """What one worker learns about one file."""

    error: str | None = None
    mode: str | None = None
    width: int = 0
    height: int = 0
    content_hash: int = 0
    phash: int = 0


# ----------------------------------------------------------------------------------------------
# decoding and conversion


def to_mode(image: Image.Image, mode: str = "RGB") -> Image.Image:
    """Convert to `mode` the way a person would see the picture, not the way Pillow converts.

    Pillow's convert clips 16- and 32-bit values to 255, so a 12-bit scan saved as I;16 comes out
    almost white; here such images are stretched from their own min-max range to 0..255. Images
    with transparency (an alpha channel, or a transparent palette entry or key colour) are
    composited on white, as a viewer shows them, unless `mode` keeps an alpha channel itself:
    Pillow drops the alpha, which reveals whatever colour the transparent pixels happen to hold.
    """
    image = _to_eight_bits(image)
    if "transparency" in image.info and image.mode in ("P", "L", "RGB"):
        image = image.convert("RGBA")
    elif image.mode not in BASE_MODES:
        # Palette, CMYK, YCbCr, LAB, HSV: Pillow converts each to RGB, not each to every mode.
        image = image.convert("RGB")
    if image.mode in ALPHA_MODES and mode not in ALPHA_MODES:
        image = _on_white(image)
    return image if image.mode == mode else image.convert(mode)


def _to_eight_bits(image: Image.Image) -> Image.Image:
    """A high-depth image stretched to 8 bits: `L`, or `LA` where a key colour (a 16-bit PNG's
    `tRNS`) makes pixels transparent; those are no part of the picture's range either."""
    if image.mode not in HIGH_DEPTH_MODES:
        return image
    # float32 holds every 16-bit value exactly, at half the memory of float64 on large scans.
    values = np.asarray(image).astype(np.float32)
    key = image.info.get("transparency")
    hidden = values == key if isinstance(key, int | float) else np.zeros(values.shape, bool)
    finite = values[np.isfinite(values) & ~hidden]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    # A constant image has no range to stretch; black keeps it constant without inventing contrast.
    scale = 255.0 / (high - low) if high > low else 0.0
    scaled = np.nan_to_num((values - low) * scale, nan=0.0, posinf=255.0, neginf=0.0)
    gray = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    if not hidden.any():
        return gray
    alpha = Image.fromarray(np.where(hidden, 0, 255).astype(np.uint8), mode="L")
    return Image.merge("LA", (gray, alpha))


def _on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")


EXIF_ORIENTATION = 0x0112


def upright(image: Image.Image) -> Image.Image:
    """The picture as a viewer shows it: turned or mirrored as its EXIF orientation says (a phone
    photo's pixels are stored as the sensor read them). `image` itself when there is nothing to
    turn, which is most images: no copy."""
    if image.getexif().get(EXIF_ORIENTATION, 1) in (None, 1):
        return image
    return ImageOps.exif_transpose(image)


def open_image(path: str | Path, mode: str = "RGB") -> Image.Image:
    """Open, decode fully, turn upright and convert with `to_mode`; decoding errors
    (DECODE_ERRORS) propagate."""
    with Image.open(path) as image:
        image.load()
        converted = to_mode(upright(image), mode)
        # to_mode may hand back the opened image itself, whose file closes with this block.
        return converted.copy() if converted is image else converted


# ----------------------------------------------------------------------------------------------
# hashes of one image


def content_hash(image: Image.Image) -> int:
    """The first 8 bytes of SHA-256 of the mode, size, palette and decoded pixels; never 0.

    Hashing the pixels, not the file, makes the same picture saved twice with other metadata or
    another compression level of a lossless format an exact duplicate.
    """
    # SHA-256, not blake2b: OpenSSL runs it on the CPU's SHA instructions, twice as fast here.
    digest = hashlib.sha256()
    digest.update(f"{image.mode};{image.width}x{image.height};".encode())
    if image.mode in ("P", "PA") and image.palette is not None:
        # Two palette images with the same indices but other colours are other pictures.
        digest.update(bytes(image.getpalette() or []))
    # A transparent index or key colour changes what the picture shows.
    digest.update(repr(image.info.get("transparency")).encode())
    digest.update(image.tobytes())
    return int.from_bytes(digest.digest()[:8], "big") or 1  # 0 means "unreadable"


def _dct_matrix(size: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: `D @ x @ D.T` is the 2-D DCT of a square `x`."""
    k = np.arange(size)[:, None]
    n = np.arange(size)[None, :]
    matrix = np.sqrt(2.0 / size) * np.cos(np.pi * (2 * n + 1) * k / (2 * size))
    matrix[0] /= np.sqrt(2.0)
    return np.asarray(matrix, dtype=np.float64)


_DCT_LOW = _dct_matrix(PHASH_SIDE)[:PHASH_BLOCK]
_BIT_WEIGHTS = np.left_shift(np.uint64(1), np.arange(63, -1, -1, dtype=np.uint64))


def perceptual_hash(image: Image.Image) -> int:
    """pHash: the signs, against their median, of the 8x8 lowest frequencies of a 32x32 thumbnail.

    Low frequencies describe the layout of light and dark, which resizing, recompression and a
    mild change of brightness or contrast leave alone; a brightness shift moves only the DC term.
    """
    gray = to_mode(image, "L")
    # Pillow's bilinear filter widens with the scale, so it is antialiased; BOX, though as fast,
    # aliases at non-integer ratios, which made a copy resized to 3/4 lose up to 12 of 64 bits.
    # reducing_gap first box-reduces large images by an integer factor, for speed.
    thumbnail = gray.resize((PHASH_SIDE, PHASH_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    pixels = np.asarray(thumbnail, dtype=np.float64)
    low = (_DCT_LOW @ pixels @ _DCT_LOW.T).ravel()
    # Rounding removes the float noise that would otherwise decide the bits of a flat image.
    low = np.round(low, 6)
    ordered = np.sort(low)
    middle = low.size // 2
    bits = low > (ordered[middle - 1] + ordered[middle]) / 2
    return int(_BIT_WEIGHTS[bits].sum(dtype=np.uint64))


def _scan_one(path: str) -> _Facts:
    if not path:  # a manifest row whose path cell is empty
        return _Facts(error=EMPTY_PATH)
    try:
        # A zero-byte file is the commonest broken download; say so rather than "cannot identify".
        if os.path.getsize(path) == 0:
            return _Facts(error="empty file (0 bytes)")
        # Image.open raises DecompressionBombError from the header alone, before any decoding.
        with Image.open(path) as image:
            mode = image.mode
            image.load()
            picture = upright(image)  # hashed as seen: a turned copy is a duplicate of its photo
            return _Facts(
                mode=mode,
                width=picture.width,
                height=picture.height,
                content_hash=content_hash(picture),
                phash=perceptual_hash(picture),
            )
    except DECODE_ERRORS as error:
        return _Facts(error=str(error) or type(error).__name__)


def _scan_chunk(paths: Sequence[str]) -> list[_Facts]:
    return [_scan_one(path) for path in paths]


# ----------------------------------------------------------------------------------------------
# scanning many images


def scan_images(
    paths: Sequence[str],
    *,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ImageScan:
    """Decode and hash every image; `on_progress` gets the number of images scanned so far.

    From MIN_IMAGES_FOR_POOL images on, and on Linux only, chunks go to `workers` forked
    processes (default: the CPUs this process may use). Processes, because most of the time per
    small image is Python code in Pillow that holds the GIL: on 2 free cores two threads gained
    ~15%, two processes ~80%. Forked, because a spawned worker would import tunesmith.data and
    so scikit-learn again, seconds each, which is what scanning 2,000 images takes.
    """
    paths = [str(path) for path in paths]
    facts: list[_Facts] = []
    for chunk_facts in _scan_chunks(paths, _pool_size(len(paths), workers)):
        facts.extend(chunk_facts)
        if on_progress is not None:
            on_progress(len(facts))
    return _collect(paths, facts)


def _pool_size(images: int, requested: int | None) -> int:
    """How many processes to fork; 0 means scan in this process."""
    if (
        images < MIN_IMAGES_FOR_POOL
        or not sys.platform.startswith("linux")  # fork is unsafe on macOS, absent on Windows
        or multiprocessing.current_process().daemon  # a daemon process may not have children
    ):
        return 0
    available = requested if requested is not None else len(os.sched_getaffinity(0))
    size = min(available, -(-images // CHUNK))
    return size if size > 1 else 0


def _scan_chunks(paths: list[str], processes: int) -> Iterator[list[_Facts]]:
    chunks = [paths[start : start + CHUNK] for start in range(0, len(paths), CHUNK)]
    if not processes:
        yield from map(_scan_chunk, chunks)
        return
    context = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(max_workers=processes, mp_context=context)
    try:
        yield from pool.map(_scan_chunk, chunks)
    finally:
        # If the caller stops early (an exception in on_progress, Ctrl-C), drop the queued chunks
        # instead of decoding the rest of the dataset before returning.
        pool.shutdown(wait=True, cancel_futures=True)


def _collect(paths: list[str], facts: list[_Facts]) -> ImageScan:
    return ImageScan(
        paths=paths,
        readable=np.array([fact.error is None for fact in facts], dtype=bool),
        errors=[fact.error for fact in facts],
        modes=[fact.mode for fact in facts],
        widths=np.array([fact.width for fact in facts], dtype=np.int32),
        heights=np.array([fact.height for fact in facts], dtype=np.int32),
        content_hash=np.array([fact.content_hash for fact in facts], dtype=np.uint64),
        phash=np.array([fact.phash for fact in facts], dtype=np.uint64),
    )


# ----------------------------------------------------------------------------------------------
# pairs


def exact_duplicates(hashes: np.ndarray, other: np.ndarray | None = None) -> np.ndarray:
    """(m, 2) index pairs with equal content hashes, sorted; 0 (unreadable) matches nothing.

    Without `other`: pairs (i, j), i < j, within `hashes`. With it: (i in hashes, j in other).
    """
    left = np.asarray(hashes, dtype=np.uint64)
    right = left if other is None else np.asarray(other, dtype=np.uint64)
    order = np.argsort(right, kind="stable")
    ordered = right[order]
    first = np.searchsorted(ordered, left, side="left")
    counts = np.searchsorted(ordered, left, side="right") - first
    counts[left == 0] = 0
    rows = np.repeat(np.arange(left.size), counts)
    # Position k of the output lies offset (k - start of its row's run) into that row's range.
    run_starts = np.repeat(np.cumsum(counts) - counts, counts)
    columns = order[np.repeat(first, counts) + np.arange(rows.size) - run_starts]
    pairs = np.stack([rows, columns], axis=1).astype(np.int64)
    return pairs[pairs[:, 0] < pairs[:, 1]] if other is None else pairs


def near_duplicates(
    hashes: np.ndarray,
    other: np.ndarray | None = None,
    *,
    max_distance: int = 4,
    valid: np.ndarray | None = None,
    other_valid: np.ndarray | None = None,
) -> np.ndarray:
    """(m, 2) index pairs whose perceptual hashes differ in at most `max_distance` bits, sorted.

    Without `other`: pairs (i, j), i < j, within `hashes`. With it: (i in hashes, j in other).
    Pass `valid=scan.readable` (and `other_valid`): unreadable images have hash 0, which is also
    the hash of a black image, so they cannot be told apart by the hash alone. The comparison runs
    in blocks of rows, so memory stays near PAIR_BLOCK_CELLS * 9 bytes for any size.
    """
    left = np.asarray(hashes, dtype=np.uint64)
    right = left if other is None else np.asarray(other, dtype=np.uint64)
    left_ok = _mask(valid, left.size)
    right_ok = left_ok if other is None else _mask(other_valid, right.size)
    left_index, right_index = np.flatnonzero(left_ok), np.flatnonzero(right_ok)
    found = [
        np.stack([left_index[rows], right_index[columns]], axis=1)
        for rows, columns in _close_blocks(
            left[left_index], right[right_index], max_distance, within=other is None
        )
    ]
    return np.concatenate(found).astype(np.int64) if found else np.empty((0, 2), np.int64)


def _mask(valid: np.ndarray | None, size: int) -> np.ndarray:
    if valid is None:
        return np.ones(size, dtype=bool)
    mask = np.asarray(valid, dtype=bool)
    if mask.shape != (size,):
        raise ValueError(f"a valid mask of shape {mask.shape} for {size} hashes")
    return mask


def _close_blocks(
    left: np.ndarray, right: np.ndarray, max_distance: int, *, within: bool
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, columns) of the close pairs, one block of rows at a time, in row-major order."""
    block = max(1, PAIR_BLOCK_CELLS // max(1, right.size))
    for start in range(0, left.size, block):
        stop = min(start + block, left.size)
        # Within one set only columns after the block's first row can pair with i < j.
        offset = start + 1 if within else 0
        distance = np.bitwise_count(left[start:stop, None] ^ right[None, offset:])
        rows, columns = np.nonzero(distance <= max_distance)
        rows, columns = rows + start, columns + offset
        if within:
            keep = rows < columns
            rows, columns = rows[keep], columns[keep]
        if rows.size:
            yield rows, columns


__all__ = [
    "ImageScan",
    "exact_duplicates",
    "near_duplicates",
    "open_image",
    "scan_images",
    "to_mode",
]


def confirm_near_pairs(
    paths: Sequence[str],
    other_paths: Sequence[str] | None,
    pairs: np.ndarray,
    *,
    min_correlation: float = NEAR_MIN_CORRELATION,
) -> np.ndarray:
    """The `pairs` (from `near_duplicates`) whose 32x32 grayscale thumbnails also correlate at
    `min_correlation` or more.

    A 64-bit hash collides for images that are alike but not the same picture: on MNIST, one
    handwritten 1 and another lie within 4 bits. A re-encoded or brightened copy keeps a
    correlation near 0.999 while distinct look-alikes stay below about 0.975, so the candidates
    are checked pixel by pixel; only the candidates are opened again.
    """
    if not len(pairs):
        return pairs
    right = paths if other_paths is None else other_paths
    cache: dict[tuple[int, int], np.ndarray] = {}

    def thumbnail(side: int, index: int) -> np.ndarray:
        key = (side, index)
        if key not in cache:
            source = paths if side == 0 else right
            pixels = np.asarray(open_image(source[index], "L").resize((32, 32)), np.float32)
            centred = pixels.ravel() - pixels.mean()
            cache[key] = centred / max(float(np.linalg.norm(centred)), 1e-6)
        return cache[key]

    keep = [float(thumbnail(0, i) @ thumbnail(1, j)) >= min_correlation for i, j in pairs]
    confirmed: np.ndarray = pairs[np.asarray(keep, dtype=bool)]
    return confirmed
