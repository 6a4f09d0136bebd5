"""Reading a weights file without running code, and loading it only where every key fits.

A weights file is safetensors, or a PyTorch state dict that `torch.load(weights_only=True)` reads:
a pickle that would construct arbitrary objects (and so run code) is refused, never unpickled.
Loading lists every missing, unexpected and wrongly shaped key instead of leaving part of a network
at its random initialization, which is what a weights file for another architecture would do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from tunesmith.errors import TunesmithError


def read_state_dict(path: Path, *, field: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise TunesmithError(
            "weights file not found",
            file=path,
            field=field,
            fix="set ?weights= to an existing .safetensors or .pth file",
        )
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError) as error:
            raise TunesmithError(
                f"cannot read the safetensors file: {error}",
                file=path,
                field=field,
                fix="save the weights again with safetensors.torch.save_file",
            ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError or RuntimeError with a long text
        raise TunesmithError(
            "the weights file is not a plain state dict (loading it would have to run code): "
            f"{str(error).splitlines()[0]}",
            file=path,
            field=field,
            fix="save the weights as safetensors or as torch.save(model.state_dict(), file)",
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TunesmithError(
            "the weights file does not hold a state dict of tensors",
            file=path,
            field=field,
            fix="save it with torch.save(model.state_dict(), file)",
        )
    return state


def key_summary(**groups: Sequence[str]) -> str:
    """`missing keys (3): a, b, c; unexpected keys (1): d`, four names shown per group."""
    return "; ".join(
        f"{label.replace('_', ' ')} ({len(keys)}): {', '.join(keys[:4])}"
        + (", ..." if len(keys) > 4 else "")
        for label, keys in groups.items()
        if keys
    )


def load_weights(
    model: torch.nn.Module,
    path: Path,
    *,
    field: str,
    ignore: Sequence[str] = (),
    architecture: str = "this architecture",
) -> None:
    """Load `path` into `model`; keys under the `ignore` prefixes (an old classifier) may be
    left over, any other difference is an error that lists the keys."""
    state = read_state_dict(path, field=field)
    expected = model.state_dict()
    unexpected = [
        key
        for key in state
        if key not in expected and not any(key.startswith(prefix) for prefix in ignore)
    ]
    missing = [key for key in expected if key not in state]
    wrong_shape = [
        key for key in expected if key in state and state[key].shape != expected[key].shape
    ]
    if missing or unexpected or wrong_shape:
        details = key_summary(
            missing_keys=missing, unexpected_keys=unexpected, wrong_shapes=wrong_shape
        )
        raise TunesmithError(
            f"the weights do not match {architecture}: {details}",
            file=path,
            field=field,
            fix=f"use weights saved from {architecture} (or convert them first)",
        )
    model.load_state_dict({key: state[key] for key in expected})
