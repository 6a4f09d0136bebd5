"""The model bundle in `best/`: everything needed to predict, and nothing that runs code on load.

    best/
      model.safetensors   all weights (backbone and head; of each member, for an ensemble)
      tunesmith.json      task, classes, backbone architecture, head shape, preprocessing,
                          inputs (text column, or the fitted tabular encoding), checksum
      backbone/           for hf: backbones, the config and tokenizer or image processor files
      README.md           the model card (data, metrics with intervals, baselines, use, limits)
      hf/                 for hf: backbones, the fine-tuned network as `save_pretrained` writes it
      timm.safetensors    for timm: backbones, the network's weights as timm names them

The bundle is written into a temporary folder and renamed into place, so a crash never leaves a
half-written `best/`.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, get_args

import torch
from safetensors.torch import load_model, save_model

from tunesmith import __version__
from tunesmith.config import Task
from tunesmith.errors import TunesmithError
from tunesmith.io import file_sha256, shareable, writing
from tunesmith.models import TaskModel, make_head, rebuild_backbone
from tunesmith.models.ensemble import Ensemble

FORMAT_VERSION = 2  # 2: any task kind; the head names its outputs; backbones hold `network`
MANIFEST = "tunesmith.json"
WEIGHTS = "model.safetensors"


def save_bundle(
    model: TaskModel | Ensemble,
    folder: Path,
    *,
    task: str,
    classes: list[str],
    head: dict[str, Any],
    inputs: dict[str, Any],
    temperature: float | None = None,
    spec: str | None = None,
) -> None:
    """Write `model` as a bundle at `folder`, replacing an old bundle only once it is complete.
    `temperature` divides a classifier's outputs before the softmax (fitted on validation);
    `spec` is the backbone as the config named it (e.g. `hf:models/MiniLM`), for the record."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        backbone_info = model.backbone.save_architecture(staging / "backbone")
        with writing(folder / WEIGHTS):
            save_model(model, str(staging / WEIGHTS))
        # The fine-tuned backbone in its own library's format too (one network: not for an
        # ensemble, whose members differ).
        native = None if isinstance(model, Ensemble) else model.backbone.save_native(staging)
        manifest = {
            "format_version": FORMAT_VERSION,
            "task": task,
            "classes": classes,
            "backbone": backbone_info | ({"spec": spec} if spec else {}),
            "head": head,
            "preprocessing": model.backbone.preprocessing(),
            "inputs": inputs,
            "weights_sha256": file_sha256(staging / WEIGHTS),
            "temperature": temperature,
            "native": native,
            # Several models of this architecture whose averaged outputs are the prediction.
            "ensemble": {"members": len(model.members), "kind": model.kind}
            if isinstance(model, Ensemble) else None,
            "versions": _versions(),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _swap_into_place(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _versions() -> dict[str, str]:
    """Of tunesmith and the libraries that read the bundle and its native copy (hf/ needs a
    transformers that knows its config; timm.safetensors, timm's names)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"tunesmith": __version__, "torch": torch.__version__}
    for package in ("transformers", "timm", "safetensors"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


def _swap_into_place(staging: Path, folder: Path) -> None:
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    shareable(staging)
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


# What every bundle's tunesmith.json holds, and loading reads.
REQUIRED_KEYS = ("task", "classes", "backbone", "head", "inputs", "weights_sha256")


def read_manifest(folder: Path) -> dict[str, Any]:
    """The bundle's tunesmith.json, checked: valid JSON of this format version with every
    required key (a damaged or hand-edited file is a clear error, not a traceback)."""
    path = folder / MANIFEST
    if not path.is_file():
        raise TunesmithError(
            "not a tunesmith bundle (tunesmith.json is missing)",
            file=folder,
            fix="pass a run folder (runs/NAME) or its best/ folder",
        )
    try:
        manifest: Any = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TunesmithError(
            f"tunesmith.json is not valid JSON ({error})",
            file=path,
            fix="restore the bundle from the run folder, or run the config again",
        ) from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise TunesmithError(
            f"tunesmith.json has no whole-number format_version (found {version!r})",
            file=path,
            field="format_version",
            fix="restore the bundle from the run folder, or run the config again",
        )
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise TunesmithError(
            f"tunesmith.json lacks {', '.join(missing)}",
            file=path,
            field=missing[0],
            fix="restore the bundle from the run folder, or run the config again",
        )
    if version < FORMAT_VERSION:
        raise TunesmithError(
            f"bundle format {manifest.get('format_version')} was written by an older tunesmith "
            f"(this one reads {FORMAT_VERSION})",
            file=path,
            field="format_version",
            fix="run the config again with this version to write a new bundle",
        )
    if version > FORMAT_VERSION:
        raise TunesmithError(
            f"bundle format {manifest['format_version']} is newer than this tunesmith reads "
            f"({FORMAT_VERSION})",
            file=path,
            field="format_version",
            fix="upgrade tunesmith to the version that wrote the bundle",
        )
    _check_contents(manifest, path)
    return dict(manifest)


def _check_contents(manifest: dict[str, Any], path: Path) -> None:
    """The values prediction reads are of the kind it reads (tunesmith.json has no checksum of
    its own: a hand edit is a clear error, not a traceback while predicting)."""
    task = manifest["task"]
    classes = manifest["classes"]
    head = manifest["head"]
    temperature = manifest.get("temperature")
    inputs = manifest["inputs"]
    problems = {
        "task": task not in get_args(Task) or task == "auto",
        "classes": not isinstance(classes, list) or not all(isinstance(c, str) for c in classes),
        "backbone": not isinstance(manifest["backbone"], dict),
        "head": not isinstance(head, dict) or not isinstance(head.get("num_outputs"), int),
        "temperature": temperature is not None and (
            not isinstance(temperature, int | float) or isinstance(temperature, bool)
            or not math.isfinite(temperature) or temperature <= 0),
        "inputs": not isinstance(inputs, dict) or (
            str(task).startswith("text-") and not isinstance(inputs.get("text_column"), str)) or (
            str(task).startswith("tabular-") and not (
                isinstance(inputs.get("tabular"), dict) and inputs["tabular"])) or (
            inputs.get("delimiter") is not None and not (
                isinstance(inputs["delimiter"], str) and len(inputs["delimiter"]) == 1)) or (
            not isinstance(inputs.get("encoding", "utf-8"), str)),
    }
    if not any(problems.values()) and not str(task).endswith("-regression"):
        problems["classes"] = len(classes) != head["num_outputs"]
    wrong = [key for key, bad in problems.items() if bad]
    if wrong:
        raise TunesmithError(
            f"tunesmith.json's {wrong[0]} does not fit the model "
            f"(task {task!r}, {head.get('num_outputs') if isinstance(head, dict) else '?'} "
            f"outputs, classes {classes!r:.200}, temperature {temperature!r})",
            file=path,
            field=wrong[0],
            fix="restore the bundle from the run folder, or run the config again",
        )


def load_bundle(folder: Path) -> tuple[TaskModel | Ensemble, dict[str, Any]]:
    """Rebuild the model a bundle describes and load its checked weights."""
    manifest = read_manifest(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise TunesmithError(
            "the bundle has no weights file",
            file=weights,
            fix="re-export the bundle (tunesmith run writes it to best/)",
        )
    if file_sha256(weights) != manifest["weights_sha256"]:
        raise TunesmithError(
            "the weights file does not match the checksum in tunesmith.json (altered or truncated)",
            file=weights,
            field="weights_sha256",
            fix="restore the bundle from the run folder",
        )
    parts = manifest["backbone"].get("folder")  # hf: its config and tokenizer or processor
    if parts and not (folder / str(parts)).is_dir():
        raise TunesmithError(
            f"the bundle has no {parts}/ folder (the backbone's config and preprocessing)",
            file=folder / str(parts),
            field="backbone.folder",
            fix="copy the whole bundle folder, or restore it from the run folder",
        )
    head_spec = dict(manifest["head"])
    if head_spec.get("target_scale") is not None:
        head_spec["target_scale"] = tuple(head_spec["target_scale"])

    def member() -> TaskModel:
        backbone = rebuild_backbone(folder, manifest["backbone"])
        return TaskModel(backbone, make_head(backbone.num_features, **head_spec))

    ensemble = manifest.get("ensemble")
    try:
        model: TaskModel | Ensemble = member() if not ensemble else Ensemble(
            [member() for _ in range(int(ensemble["members"]))], ensemble["kind"])
        load_model(model, str(weights))
    except (RuntimeError, ValueError, TypeError, KeyError) as error:
        # The weights passed their checksum, so the description of the model was edited.
        problem = str(error).splitlines()[0][:300]
        raise TunesmithError(
            f"the model tunesmith.json describes does not fit the bundle's weights ({problem})",
            file=folder / MANIFEST, field="backbone, head, ensemble",
            fix="restore tunesmith.json from the run folder's best/ (or the bundle as a whole)",
        ) from None
    model.eval()
    return model, manifest
