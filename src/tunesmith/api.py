"""The Python API: the stages run in pipeline order.

prepare:  config -> data (read, checked, split) -> backbone -> resolved config
fit:      prepare -> train (trial 0, the recipe) -> evaluate on test once -> bundle -> metrics
load:     a run folder or bundle -> Predictor
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from tunesmith import __version__
from tunesmith.config import Config, inspect_options, load_config
from tunesmith.console import console
from tunesmith.data import DataReport, TaskData, inspect_data, load_task_data
from tunesmith.errors import TunesmithError
from tunesmith.evaluate import (
    PRIMARY_METRIC,
    classification_metrics,
    collect_logits,
    majority_baseline,
)
from tunesmith.export import Predictor, load_predictor, save_bundle
from tunesmith.io import write_json, write_text
from tunesmith.models import Backbone, Classifier, absolute_spec, build_backbone, make_head
from tunesmith.models.hf import HFTextBackbone
from tunesmith.models.inputs import eval_batches, train_batches
from tunesmith.models.timm_source import TimmBackbone
from tunesmith.report import summary_table
from tunesmith.search import DataProfile, image_size, resolve, train_settings
from tunesmith.train import TrialResult, train_trial

EVAL_BATCH_SIZE = 64


@dataclass
class Prepared:
    config: Config  # resolved: no `auto` left
    data: TaskData
    backbone: Backbone
    profile: DataProfile


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    metrics: dict[str, Any]


def _as_config(config: Config | str | Path, overrides: list[str] | None) -> Config:
    if isinstance(config, Config):
        return config
    return load_config(config, overrides)


def prepare(config: Config) -> Prepared:
    """Read and split the data, load the backbone and resolve every `auto` in the config."""
    try:
        return _prepare(config)
    except TunesmithError as error:
        if error.file is None:  # a problem with a config value: point at the config file
            raise TunesmithError(
                error.problem, file=config.source, field=error.field, fix=error.fix
            ) from None
        raise


def _prepare(config: Config) -> Prepared:
    data = load_task_data(config)
    _check_trainable(data, config)
    profile = DataProfile(
        modality=data.modality,
        train_rows=len(data.train),
        classes=len(data.classes),
        median_image_side=data.median_image_side,
        source_format=data.report.parts["train"].source.format,
        split_method=data.splits["method"],
    )
    backbone = build_backbone(
        config.model.backbone,
        modality=data.modality,
        resolve=config.path,
        max_length=_given(config.data.max_length),
        image_size=_given(config.data.image_size),
    )
    if isinstance(backbone, TimmBackbone) and _given(config.data.image_size) is None:
        backbone.image_size = image_size(profile, backbone.pretrained_stats()["pretrained_size"])
    if isinstance(backbone, HFTextBackbone) and _given(config.data.max_length) is None:
        backbone.max_length = backbone.length_for(data.train.inputs)
    resolved = resolve(
        config,
        profile,
        num_features=backbone.num_features,
        preprocessing=backbone.preprocessing(),
        backbone=absolute_spec(config.model.backbone, config.path),
    )
    return Prepared(resolved, data, backbone, profile)


def _check_trainable(data: TaskData, config: Config) -> None:
    """The model and training stages fine-tune single-label text and image classifiers so far;
    `tunesmith inspect` reads and checks every task."""
    if data.spec.kind == "classification" and data.modality in ("text", "image"):
        return
    train = data.report.parts["train"]
    if data.modality == "tabular" and config.task == "auto":
        raise TunesmithError(
            f"column {config.data.text_column!r} not found; the file has columns {train.columns}, "
            "so it reads as a table of features, and tunesmith trains text and image "
            "classifiers so far",
            file=train.source.path,
            field="data.text_column",
            fix="set data.text_column to the column that holds the text",
        )
    raise TunesmithError(
        f"the data is a {data.task} task; tunesmith trains text-classification and "
        "image-classification so far (inspect, split and cleaning support it already)",
        file=config.source,
        field="task",
        fix="run `tunesmith inspect` on this data, or set task: to a classification task if the "
        "labels are classes",
    )


def _given(value: int | str | None) -> int | None:
    """A size the user set, or None where the recipe decides."""
    return value if isinstance(value, int) else None


def validate(config: Config | str | Path, overrides: list[str] | None = None) -> Prepared:
    """Check config, data and model without training: one forward pass on two training rows."""
    prepared = prepare(_as_config(config, overrides))
    model = _classifier(prepared)
    batches = eval_batches(prepared.backbone, prepared.data.train.inputs[:2], batch_size=2)
    collect_logits(model, batches)
    return prepared


def _classifier(prepared: Prepared) -> Classifier:
    set_seed(prepared.config.seed)  # the head's initialization is part of what the seed fixes
    head = prepared.config.model.head
    return Classifier(
        prepared.backbone,
        make_head(
            prepared.backbone.num_features,
            len(prepared.data.classes),
            layers=int(head.layers),
            hidden=int(head.hidden),
            activation=str(head.activation),
            init=str(head.init),
            dropout=float(head.dropout),
        ),
    )


def _fresh_run_dir(run_dir: Path) -> None:
    """Start an empty run folder. Whatever an earlier run left there, finished or killed, is kept
    under `NAME-<time it was last written>`, never overwritten."""
    if run_dir.exists() and any(run_dir.iterdir()):
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(run_dir.stat().st_mtime))
        kept = run_dir.with_name(f"{run_dir.name}-{stamp}")
        suffix = 1
        while kept.exists():
            kept, suffix = kept.with_name(f"{run_dir.name}-{stamp}-{suffix}"), suffix + 1
        run_dir.rename(kept)
        console.print(f"[yellow]kept the previous run folder as {kept}[/]")
    run_dir.mkdir(parents=True, exist_ok=True)


def _data_report(data: TaskData) -> dict[str, Any]:
    """What inspection found in the sources, what cleaning did, and the parts trained on."""
    return {
        **data.report.to_json(),
        "trained_on": {
            name: {"rows": len(part), "label_counts": dict(Counter(part.labels).most_common())}
            for name, part in (("train", data.train), ("val", data.val), ("test", data.test))
        },
    }


def fit(config: Config | str | Path, overrides: list[str] | None = None) -> RunSummary:
    """Run the whole pipeline, as `tunesmith run` does."""
    started = time.perf_counter()
    prepared = prepare(_as_config(config, overrides))
    resolved, data = prepared.config, prepared.data
    run_dir = resolved.run_dir
    _fresh_run_dir(run_dir)
    write_text(run_dir / "config.yaml", resolved.to_yaml())
    write_json(run_dir / "splits.json", data.splits)
    write_json(run_dir / "data_report.json", _data_report(data))

    settings = train_settings(resolved)
    model = _classifier(prepared)
    train_loader = train_batches(
        prepared.backbone,
        data.train,
        data.targets(data.train),
        batch_size=settings.batch_size,
        seed=settings.seed,
        augment=resolved.data.augment,
        classes=len(data.classes),
    )
    val = eval_batches(
        prepared.backbone, data.val.inputs, data.targets(data.val), batch_size=EVAL_BATCH_SIZE
    )
    trial_dir = run_dir / "trials" / "0"
    write_text(trial_dir / "config.yaml", resolved.to_yaml())
    console.print(
        f"[bold]training[/] {resolved.model.backbone} on {len(data.train)} rows "
        f"({len(data.val)} val, {len(data.test)} test held out)"
    )
    result = train_trial(model, train_loader, val, settings, trial_dir)

    test_metrics = _evaluate_test(model, prepared, result)
    save_bundle(
        model,
        run_dir / "best",
        task=data.task,
        classes=data.classes,
        head=resolved.model.head.model_dump(),
        inputs={"text_column": resolved.data.text_column} if data.modality == "text" else {},
    )
    metrics = _metrics_record(prepared, result, test_metrics, time.perf_counter() - started)
    write_json(run_dir / "metrics.json", metrics)
    console.print(summary_table(metrics, str(run_dir)))
    return RunSummary(run_dir, metrics)


def _evaluate_test(model: Classifier, prepared: Prepared, result: TrialResult) -> dict[str, float]:
    """The one evaluation on the test part, after the model was chosen on validation alone."""
    data = prepared.data
    batches = eval_batches(
        prepared.backbone, data.test.inputs, data.targets(data.test), batch_size=EVAL_BATCH_SIZE
    )
    device = next(model.parameters()).device
    autocast = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
        if result.precision == "bf16"
        else contextlib.nullcontext
    )
    logits, targets = collect_logits(model, batches, device=device, autocast=autocast)
    return classification_metrics(logits, targets)


def _metrics_record(
    prepared: Prepared, result: TrialResult, test: dict[str, float], wall_s: float
) -> dict[str, Any]:
    import numpy as np

    data = prepared.data
    train = prepared.config.train
    return {
        "task": data.task,
        "primary_metric": PRIMARY_METRIC,
        "test": {name: {"value": value} for name, value in test.items()},
        "val": {
            name: {"value": value} for name, value in result.best_val.items() if name != "loss"
        },
        "baselines": {
            "majority": majority_baseline(
                np.asarray(data.targets(data.train)), np.asarray(data.targets(data.test))
            )
        },
        "search": {
            "trials_completed": 1,
            "trials_pruned": 0,
            "best_trial": 0,
            "best_params": train.model_dump(mode="json"),
        },
        "train": {
            "best_epoch": result.best_epoch,
            "precision": result.precision,
            "samples_per_s": result.train_samples_per_s,
        },
        "wall_s": round(wall_s, 1),
        "test_rows": len(data.test),
        "versions": {"tunesmith": __version__, "torch": torch.__version__},
    }


def inspect(
    data: str | Path,
    *,
    test: str | Path | None = None,
    task: str = "auto",
    **options: Any,
) -> DataReport:
    """Check a dataset as `tunesmith inspect` does. `options` are `data` config keys
    (label_column, text_column, label_delimiter, format, delimiter, encoding, ...)."""
    chosen, data_config = inspect_options(
        {"task": task, "data": {"train": data, "test": test, **options}}
    )
    return inspect_data(data_config, task=chosen, resolve=lambda path: Path(path).absolute())


def load(run_or_bundle: str | Path) -> Predictor:
    return load_predictor(run_or_bundle)
