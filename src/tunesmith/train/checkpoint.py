"""Checkpoints a killed run resumes from, exactly, without unpickling anything.

    trials/N/checkpoints/STAGE/step-00000250/     (STAGE: probe, train)
      tensors.safetensors   model, optimizer state, weight average, torch RNG states
      state.json            everything else: position in the data order, schedule, optimizer
                            hyperparameters, Python and NumPy RNG states, best score so far,
                            the config's fingerprint and the tensors file's checksum
      best.safetensors      the best weights as they were then (a hard link when possible:
                            checkpoints taken while the best stayed the same share one file;
                            its checksum is in state.json too)

A checkpoint is written into a temporary folder and renamed into place, so a kill leaves either
the old set or the new one. The newest two are kept: when the newest cannot be read (a truncated
or altered file), the run resumes from the one before and says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesmith.console import console
from tunesmith.errors import TunesmithError
from tunesmith.io import file_sha256, shareable, writing

FOLDER = "checkpoints"
STAGES = ("probe", "train")  # in the order a strategy runs them
FORMAT = "tunesmith.checkpoint"
VERSION = 1
KEEP = 2
TENSORS = "tensors.safetensors"
STATE = "state.json"
BEST = "best.safetensors"


@dataclass
class Checkpoint:
    folder: Path
    state: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def best_weights(self) -> dict[str, torch.Tensor] | None:
        from safetensors.torch import load_file

        path = self.folder / BEST
        return load_file(path) if path.is_file() else None


def config_fingerprint(config_yaml: str) -> str:
    return hashlib.sha256(config_yaml.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# random number generators


def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Python's and NumPy's generator states (JSON) and torch's (tensors)."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    plain = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, [int(k) for k in keys], int(position), int(has_gauss), float(cached)],
    }
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = state
    return plain, tensors


def restore_rng(plain: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(key for key in tensors if key.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[key] for key in cuda])


# ----------------------------------------------------------------------------------------------
# optimizer state as tensors and JSON


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """(JSON part, tensors) of an optimizer's state_dict."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        plain_state[str(index)] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                plain_state[str(index)][key] = value
    groups = [
        {key: list(value) if isinstance(value, tuple) else value for key, value in group.items()}
        for group in state["param_groups"]
    ]
    return {"state": plain_state, "param_groups": groups}, tensors


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, plain: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    state: dict[int, dict[str, Any]] = {int(k): dict(v) for k, v in plain["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    groups = [
        {key: tuple(value) if key == "betas" else value for key, value in group.items()}
        for group in plain["param_groups"]
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    # Saved tensors come back contiguous; a state tensor must have its parameter's layout again
    # (channels-last convolutions), or a fused update pairs the wrong elements.
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            held = optimizer.state.get(parameter, {})
            for key, value in held.items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.shape == parameter.shape
                    and value.stride() != parameter.stride()
                ):
                    held[key] = torch.empty_like(parameter).copy_(value)


def scheduler_state(scheduler: Any) -> dict[str, Any]:
    """The scheduler's counters; its schedule (a function of the plan) is rebuilt, not saved:
    LambdaLR records `None` for a function, which loading takes as "keep the current one"."""
    state = dict(scheduler.state_dict())
    state["lr_lambdas"] = [None] * len(state.get("lr_lambdas") or [])
    return state


# ----------------------------------------------------------------------------------------------
# writing and reading


def save_checkpoint(
    trial_dir: Path,
    step: int,
    state: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    *,
    best: Path | None = None,
) -> Path:
    """Write a checkpoint of `state["stage"]` atomically; keep the newest KEEP of the stage's."""
    from safetensors.torch import save_file

    root = trial_dir / FOLDER / str(state["stage"])
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{step:08d}"
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".step-"))
    try:
        contiguous = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
        with writing(staging / TENSORS):
            save_file(contiguous, str(staging / TENSORS))
        if best is not None and best.is_file():
            try:
                os.link(best, staging / BEST)  # the file as it is now; a later best is a new one
            except OSError:
                shutil.copy2(best, staging / BEST)
        record = {
            "format": FORMAT,
            "version": VERSION,
            "step": step,
            "tensors_sha256": file_sha256(staging / TENSORS),
            "best_sha256": file_sha256(staging / BEST) if (staging / BEST).is_file() else None,
            **state,
        }
        (staging / STATE).write_text(json.dumps(record) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        shareable(staging)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in sorted(root.glob("step-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _read(folder: Path) -> Checkpoint:
    from safetensors.torch import load_file

    state = json.loads((folder / STATE).read_text())
    if state.get("format") != FORMAT or int(state.get("version", 0)) > VERSION:
        raise ValueError(f"not a {FORMAT} version {VERSION} checkpoint")
    if file_sha256(folder / TENSORS) != state["tensors_sha256"]:
        raise ValueError("tensors.safetensors does not match its checksum (truncated or altered)")
    best = state.get("best_sha256")  # absent from checkpoints written before it was kept
    if best is not None and file_sha256(folder / BEST) != best:
        raise ValueError(f"{BEST} does not match its checksum (truncated or altered)")
    return Checkpoint(folder, state, load_file(folder / TENSORS))


def latest_checkpoint(trial_dir: Path) -> Checkpoint | None:
    """The newest readable checkpoint of a trial (of its latest stage); a broken newer one is
    named and skipped."""
    candidates = [
        folder
        for stage in reversed(STAGES)
        for folder in sorted((trial_dir / FOLDER / stage).glob("step-*"), reverse=True)
    ]
    for folder in candidates:
        try:
            return _read(folder)
        except (OSError, ValueError, KeyError) as error:
            console.print(
                f"[yellow]checkpoint {folder} cannot be read ({error}); trying the one before[/]"
            )
    return None


def require_checkpoint(trial_dir: Path, *, field: str = "--resume") -> Checkpoint:
    checkpoint = latest_checkpoint(trial_dir)
    if checkpoint is None:
        raise TunesmithError(
            "there is no checkpoint to resume from"
            + (" (the ones there cannot be read)" if (trial_dir / FOLDER).exists() else ""),
            file=trial_dir,
            field=field,
            fix="run without --resume to start the run afresh",
        )
    return checkpoint
