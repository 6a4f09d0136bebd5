"""The Python API: the stages run in pipeline order.

prepare:  config -> data (read, checked, split) -> backbone -> resolved config (`candidate`)
fit:      prepare -> train (trial 0, the recipe, as its strategy's stages; or the search stage,
          `searching`) -> evaluate on test once -> bundle -> metrics
load:     a run folder or bundle -> Predictor
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import yaml
from accelerate import PartialState
from rich.markup import escape

from tunesmith import __version__
from tunesmith.candidate import (
    EVAL_BATCH_SIZE,
    Prepared,
    as_config,
    batches_for,
    bundle_inputs,
    head_spec,
    label_counts,
    loss_weights,
    predict_part,
    prepare,
    task_model,
    train_candidate,
)
from tunesmith.config import Config, inspect_options, load_config
from tunesmith.console import console
from tunesmith.data import DataReport, TaskData, inspect_data, label_targets, load_task_data
from tunesmith.data.sources import Examples
from tunesmith.errors import TunesmithError
from tunesmith.evaluate import collect_logits, objective_for
from tunesmith.evaluate.baselines import Baseline, baseline_record
from tunesmith.evaluate.calibration import Calibration, calibrate, scaled
from tunesmith.evaluate.intervals import bootstrap_values, scored_with_intervals
from tunesmith.evaluate.metrics import per_class
from tunesmith.export import Predictor, load_predictor, save_bundle
from tunesmith.export.card import write_model_card
from tunesmith.io import (
    LABEL_JOINER,
    PREDICTIONS,
    TEST_PREDICTIONS,
    atomic_write,
    one_run_at_a_time,
    require_run_folder,
    write_json,
    write_text,
)
from tunesmith.models.inputs import eval_batches
from tunesmith.report import baselines_ahead, summary_table
from tunesmith.report.html import REPORT, write_report
from tunesmith.search import is_scratch, train_settings
from tunesmith.searching import (
    Kept,
    WorkerSummary,
    check_search_can_start,
    check_space,
    search_stage,
    search_worker,
    searches,
)
from tunesmith.train import TrialResult
from tunesmith.train.checkpoint import require_checkpoint
from tunesmith.train.loop import Diverged
from tunesmith.train.precision import default_device, resolve_precision

__all__ = [
    "Evaluation", "LrFindSummary", "Prepared", "RunSummary", "WorkerSummary", "batches_for",
    "evaluate", "export", "fit", "inspect", "load", "lr_find", "prepare", "report",
    "search_worker", "task_model", "train_candidate", "validate",
]


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    metrics: dict[str, Any]


def validate(config: Config | str | Path, overrides: list[str] | str | None = None) -> Prepared:
    """Check config, data and model without training: one forward pass on two training rows,
    and the search space, where the run searches or names one."""
    given = as_config(config, overrides)
    prepared = prepare(given)
    if searches(given) or given.search.space:
        check_space(given, prepared)
    _warn_space_unused(given)
    model = task_model(prepared)
    rows = prepared.data.train.subset([0, 1][: len(prepared.data.train)])
    batches = eval_batches(prepared.backbone, prepared.inputs(rows), batch_size=2)
    collect_logits(model, batches)
    return prepared


def _warn_space_unused(config: Config) -> None:
    """A search space in a run that does not search is most likely a forgotten limit."""
    if config.search.space and not searches(config):
        console.print(escape(
            f"{config.source}: search.space is set, but without search.trials above 1 or "
            "search.budget the run does not search: it trains the recipe once (set "
            "search.trials or search.budget to search the space)"),
            style="yellow", highlight=False)


def _check_run_folder(config: Config) -> None:
    """The run folder can be made: output_dir and the folders above it are folders (or will be),
    and output_dir/name is not a file."""
    output_dir = config.run_dir.parent
    for folder in (output_dir, *output_dir.parents):
        if folder.exists() and not folder.is_dir():
            raise TunesmithError(f"{folder} is a file, so the run folder cannot be made in it",
                                 file=config.source, field="output_dir",
                                 fix="set output_dir to a folder, or move the file")
    if config.run_dir.exists() and not config.run_dir.is_dir():
        raise TunesmithError(f"{config.run_dir} is a file, not a run folder",
                             file=config.source, field="name",
                             fix="give the run another name, or move the file")


def _fresh_run_dir(run_dir: Path, *, shared_study: bool = False) -> None:
    """Start an empty run folder. Whatever an earlier run left there, finished or killed, is kept
    under `NAME-<time it was last written>`, never overwritten. A search of a shared study keeps
    the `trials/` that its workers (`tunesmith search`, started first) wrote into it with
    nothing else: they are this study's trials (a study an earlier run ended is refused before),
    which the run chooses among."""
    held = {child.name for child in run_dir.iterdir()} if run_dir.is_dir() else set()
    if shared_study and held == {"trials"}:
        return
    if held:
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
            name: {"rows": len(part), "label_counts": label_counts(part, data.spec.kind)}
            for name, part in (("train", data.train), ("val", data.val), ("test", data.test))
        },
    }


def fit(
    config: Config | str | Path, overrides: list[str] | str | None = None, *, resume: bool = False
) -> RunSummary:
    """Run the whole pipeline, as `tunesmith run` does; `resume` continues a killed run of the
    same config from its last checkpoint (or its study, when it searches)."""
    started = time.perf_counter()
    # Launched as many processes (accelerate launch, torchrun), each prepares the same data and
    # model and trains its share of every batch; the first alone writes the run folder.
    processes = PartialState(cpu=not torch.cuda.is_available())
    given = as_config(config, overrides)
    prepared = prepare(given)
    # The main process holds the run folder: another run of the same name is refused meanwhile.
    if processes.is_main_process:
        _check_run_folder(given)
    held = one_run_at_a_time(prepared.config.run_dir) if processes.is_main_process else None
    with held or contextlib.nullcontext():
        return _fit(given, prepared, processes, resume=resume, started=started)


def _fit(given: Config, prepared: Prepared, processes: PartialState, *, resume: bool,
         started: float) -> RunSummary:
    resolved, run_dir = prepared.config, prepared.config.run_dir
    searching = searches(given)
    _warn_space_unused(given)
    if resume:
        _check_resumable(prepared)
        if _finished(run_dir):
            console.print(f"[green]{run_dir} finished already[/]; nothing to resume")
            return RunSummary(run_dir, json.loads((run_dir / "metrics.json").read_text()))
    else:
        if searching:  # before the run folder: a refused search writes nothing
            check_search_can_start(given, prepared, started=started)
        if processes.is_main_process:
            _fresh_run_dir(run_dir, shared_study=searching and given.search.storage is not None)
            write_text(run_dir / "config.yaml", resolved.to_yaml())
            write_json(run_dir / "splits.json", prepared.data.splits)
            write_json(run_dir / "data_report.json", _data_report(prepared.data))
    processes.wait_for_everyone()

    # A resumed run's wall time counts what ran before the kill: the trials' time the study
    # recorded, or the training time of the checkpoint it goes on from.
    if searching:
        kept, search_record = search_stage(given, prepared, resume=resume, started=started)
        earlier = max(0.0, search_record["spent_s"] - (time.perf_counter() - started))
    else:
        trial_dir = run_dir / "trials" / "0"
        checkpoint = require_checkpoint(trial_dir) if resume else None
        earlier = float(checkpoint.state.get("spent_s", 0.0)) if checkpoint else 0.0
        kept, search_record = Kept(0, prepared), None
        try:
            kept.model, kept.result = train_candidate(prepared, trial_dir, resume=checkpoint)
        except Diverged as error:  # in a search, the trial fails and the search goes on
            raise TunesmithError(
                str(error), file=given.source, field=error.field,
                fix=f"lower {error.field} (by 10x, say), or set it to auto") from None
    if not processes.is_main_process:
        return RunSummary(run_dir, {})  # the main process evaluates and writes the bundle
    chosen, model, result = kept.prepared, kept.model, kept.result
    assert chosen is not None and model is not None and result is not None

    # The one evaluation on the test part, after the model was chosen on validation alone; the
    # chosen model's validation scores beside it (out of fold, when it is a fold ensemble),
    # each with its interval: the noise next to the result. Both in fp32, as the bundle, the
    # ONNX graph and `evaluate` predict: bf16 autocast, which trained and chose the model, moved
    # a MiniLM's probabilities by up to 3e-3 from those shipped.
    folded = search_record is not None and search_record.get("folds", 1) > 1
    def shipped(part: Examples) -> tuple[np.ndarray, np.ndarray]:
        return predict_part(model, chosen, part, result, precision=SHIPPED_PRECISION)

    # Out of fold, each val row is the fold model's that did not train on it.
    val = kept.val_outputs if folded else None
    outputs = {"test": shipped(chosen.data.test), "val": val or shipped(chosen.data.val)}
    # A classifier's probabilities are calibrated on validation (one temperature, which the
    # bundle applies); what is scored is what the bundle predicts. Not a fold ensemble's: its
    # validation outputs are each one fold model's, sharper than the members' average it ships.
    calibration = (calibrate(*outputs["val"], test=outputs["test"])
                   if chosen.kind == "classification" and not folded else None)
    if calibration is not None:
        outputs = {name: (scaled(o, calibration.temperature), t)
                   for name, (o, t) in outputs.items()}
    seed = given.seed
    resampled = {name: bootstrap_values(chosen.kind, *pair, seed=seed) if len(pair[1]) else {}
                 for name, pair in outputs.items()}
    scores = {name: scored_with_intervals(chosen.kind, *pair, seed=seed,
                                          resampled=resampled[name])
              for name, pair in outputs.items()}
    save_bundle(
        model,
        run_dir / "best",
        task=chosen.data.task,
        classes=chosen.data.classes,
        head={k: v for k, v in head_spec(chosen).items() if k != "in_features"},
        inputs=bundle_inputs(chosen),
        temperature=None if calibration is None else calibration.temperature,
        spec=chosen.config.model.backbone,
    )
    model_val = _val_part(outputs["val"], chosen.data)
    baselines = baseline_record(
        chosen.kind, run_baselines(chosen), model_val=model_val, model_test=outputs["test"],
        seed=seed, model_resampled={"test": resampled["test"]} | (
            {"val": resampled["val"]} if len(model_val[1]) == len(outputs["val"][1]) else {}))
    metrics = _metrics_record(
        chosen, result, scores, earlier + time.perf_counter() - started, search=search_record,
        baselines=baselines, calibration=calibration,
        classes_table=None if chosen.kind == "regression" else per_class(
            chosen.kind, *outputs["test"], chosen.data.classes))
    write_predictions_record(run_dir, chosen, outputs)
    write_json(run_dir / "metrics.json", metrics)
    write_model_card(run_dir / "best", metrics, chosen.config.model_dump(mode="json"),
                     _data_report(chosen.data))
    console.print(summary_table(metrics, str(run_dir)))
    for line in baselines_ahead(metrics):
        console.print(f"[yellow]{line}[/]")
    console.print(f"report: {write_report(run_dir)}")
    return RunSummary(run_dir, metrics)


SHIPPED_PRECISION = "fp32"  # how a bundle predicts, whatever precision trained it


def _finished(run_dir: Path) -> bool:
    """Whether a run wrote everything it writes: its metrics, then its model card and report
    (a run killed between them resumes to write them, evaluating its trained model again)."""
    return all((run_dir / name).is_file()
               for name in ("metrics.json", "best/README.md", REPORT))


def _val_part(val: tuple[np.ndarray, np.ndarray], data: TaskData
              ) -> tuple[np.ndarray, np.ndarray]:
    """The model's outputs on the val part's rows: out-of-fold outputs cover train+val (pooled:
    the train rows first), so the val part's are the last rows."""
    outputs, targets = val
    return outputs[len(outputs) - len(data.val):], targets[len(targets) - len(data.val):]


# Settings that change how fast a run trains, not what it trains: a run resumes under others.
SPEED_ONLY = frozenset({"train.workers"})


def _check_resumable(prepared: Prepared) -> None:
    """A resumed run must have the config it was started with."""
    config = prepared.config
    saved = config.run_dir / "config.yaml"
    if not saved.is_file():
        raise TunesmithError(
            f"there is no run to resume in {config.run_dir}",
            file=config.source,
            field="--resume",
            fix="run without --resume to start it, or check name and output_dir",
        )
    differences = [
        difference
        for difference in config_differences(yaml.safe_load(saved.read_text()),
                                             yaml.safe_load(config.to_yaml()))
        if difference.split(":")[0] not in SPEED_ONLY
    ]
    if differences:
        shown = "; ".join(differences[:6]) + (" ..." if len(differences) > 6 else "")
        raise TunesmithError(
            f"the run in {config.run_dir} was made with another config: {shown}",
            file=config.source,
            field="--resume",
            fix="resume with the config the run was started with, or run without --resume to "
            "start afresh (the old run folder is kept)",
        )


def config_differences(before: Any, after: Any, prefix: str = "") -> list[str]:
    """`key: old -> new` for every value that differs between two config mappings."""
    if isinstance(before, dict) and isinstance(after, dict):
        found: list[str] = []
        for key in sorted(set(before) | set(after), key=str):
            found += config_differences(before.get(key), after.get(key), f"{prefix}{key}.")
        return found
    return [] if before == after else [f"{prefix.rstrip('.')}: {before!r} -> {after!r}"]


PROBE_ROWS = 5000  # training rows the linear-probe baseline is fitted on, at most


def run_baselines(prepared: Prepared) -> list[Baseline]:
    """The majority, classic and linear-probe baselines, fitted on the train part (see
    `tunesmith.evaluate.baselines`)."""
    from tunesmith.evaluate.baselines import (
        Parts,
        boosted_trees,
        fitted,
        linear_model,
        majority,
        pixels,
        text_model,
    )
    from tunesmith.train.stages import backbone_features

    data, kind = prepared.data, prepared.kind
    targets = np.asarray(data.targets(data.train))
    classes = len(data.classes)
    found = [majority(kind, Parts(data.train, data.val, data.test, targets, classes))]
    modality = data.train.modality
    with console.status("baselines"):
        if modality == "text":
            parts = Parts(data.train.inputs, data.val.inputs, data.test.inputs, targets, classes)
            found.append(fitted("tfidf_logistic", "TF-IDF of words and word pairs + logistic "
                                "regression", kind, parts, text_model(targets)))
        elif modality == "image":
            train, val, test = (pixels(part.inputs) for part in (data.train, data.val, data.test))
            parts = Parts(train, val, test, targets, classes)
            found.append(fitted("pixel_logistic", "logistic regression on 16x16 pixels", kind,
                                parts, linear_model))
        else:
            train, val, test = (np.asarray(prepared.inputs(part))
                                for part in (data.train, data.val, data.test))
            parts = Parts(train, val, test, targets, classes)
            found.append(fitted("gradient_boosting", "histogram gradient boosting", kind, parts,
                                boosted_trees))
        if not is_scratch(prepared.config):
            # The probe's forward pass is the costly part: on at most PROBE_ROWS training rows.
            rows = np.random.default_rng(prepared.config.seed).permutation(len(data.train))
            probed = data.train.subset(sorted(rows[:PROBE_ROWS].tolist()))
            model = task_model(prepared)
            precision = resolve_precision(prepared.config.train.precision, default_device())
            train, val, test = (backbone_features(model, eval_batches(
                prepared.backbone, prepared.inputs(part), data.targets(part),
                batch_size=EVAL_BATCH_SIZE), precision=precision)[0]
                for part in (probed, data.val, data.test))
            del model
            found.append(fitted(
                "linear_probe", "a linear model on the frozen pretrained features", kind,
                Parts(train, val, test, np.asarray(data.targets(probed)), classes),
                linear_model))
    return found


def write_predictions_record(
    run_dir: Path, prepared: Prepared, outputs: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    """The outputs the metrics were computed from (arrays), and the test rows as a table: id,
    input, label and prediction (with its probability)."""
    import pandas as pd

    arrays = {f"{name}_{what}": np.asarray(array) for name, pair in outputs.items()
              for what, array in zip(("outputs", "targets"), pair, strict=True)}

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:  # a handle: savez would add .npz to a temporary name
            np.savez_compressed(handle, **cast(dict[str, Any], arrays))

    atomic_write(run_dir / PREDICTIONS, write)
    test, (test_outputs, _) = prepared.data.test, outputs["test"]
    table = pd.DataFrame({"id": test.ids})
    if test.inputs:
        table["input"] = test.inputs
    kind, classes = prepared.kind, prepared.data.classes
    table["label"] = [LABEL_JOINER.join(v) if kind == "multilabel" else v for v in test.labels]
    if kind == "classification":
        log_probs = test_outputs - np.logaddexp.reduce(test_outputs, axis=1, keepdims=True)
        table["predicted"] = [classes[i] for i in test_outputs.argmax(axis=1)]
        table["probability"] = np.exp(log_probs.max(axis=1)).round(6)
    elif kind == "multilabel":
        table["predicted"] = [LABEL_JOINER.join(classes[j] for j in np.flatnonzero(row > 0))
                              for row in test_outputs]
    else:
        table["predicted"] = test_outputs.reshape(-1)
    write_text(run_dir / TEST_PREDICTIONS, table.to_csv(index=False))


def _metrics_record(
    prepared: Prepared, result: TrialResult, scores: dict[str, dict[str, Any]], wall_s: float, *,
    baselines: dict[str, Any], search: dict[str, Any] | None = None,
    calibration: Calibration | None = None, classes_table: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    data = prepared.data
    train = prepared.config.train
    return {
        "task": data.task,
        "primary_metric": objective_for(prepared.kind).metric,
        "test": scores["test"],
        "val": scores["val"],
        "per_class": classes_table,
        "calibration": None if calibration is None else calibration.to_json(),
        "baselines": baselines,
        "search": search or {
            "trials_completed": 1,
            "trials_pruned": 0,
            "best_trial": 0,
            "best_params": {},
        },
        "config": {"strategy": prepared.config.model.strategy,
                   "train": train.model_dump(mode="json")},
        "train": {
            "strategy": prepared.config.model.strategy,
            "best_epoch": result.best_epoch,
            "steps": result.steps,
            "stopped": result.stopped,
            "precision": result.precision,
            "samples_per_s": result.train_samples_per_s,
            "wall_s": round(result.wall_s, 1),
        },
        "wall_s": round(wall_s, 1),
        "test_rows": len(data.test),
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    """Of tunesmith, Python and the libraries a result depends on."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    found = {"tunesmith": __version__, "torch": torch.__version__,
             "python": platform.python_version()}
    for package in ("transformers", "timm", "peft", "optuna", "scikit-learn", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


@dataclass(frozen=True)
class LrFindSummary:
    suggested_lr: float
    suggested_head_lr: float
    plot: Path
    record: Path


def lr_find(
    config: Config | str | Path, overrides: list[str] | str | None = None, *, steps: int = 100
) -> LrFindSummary:
    """The learning-rate range test on the config's data and model (`tunesmith lr-find`): writes
    `lr_find.json` and `lr_find.png` to the run folder; nothing else of a run is touched."""
    from tunesmith.search.recipe import strategy_plan
    from tunesmith.train.lr_find import lr_range_test, plot
    from tunesmith.train.stages import swept_stage

    prepared = prepare(as_config(config, overrides))
    settings = train_settings(
        prepared.config, kind=prepared.kind, loss_weights=loss_weights(prepared),
        target_std=(prepared.target_scale() or (0.0, 1.0))[1],
    )
    model = task_model(prepared)
    # the weights the strategy trains (frozen blocks, adapters, a probe's head alone)
    settings = swept_stage(model, settings, strategy_plan(prepared.config, settings))
    loader = batches_for(prepared, settings.batch_size, settings.seed).train
    test = lr_range_test(model, loader, settings, steps=steps)
    run_dir = prepared.config.run_dir
    record = run_dir / "lr_find.json"
    write_json(record, {"config": prepared.config.source, **test.to_json()})
    image = run_dir / "lr_find.png"
    atomic_write(image, lambda tmp: plot(test, tmp))
    return LrFindSummary(test.suggested, test.suggested * test.head_ratio, image, record)


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


def load(run_or_bundle: str | Path, *, engine: str = "torch", precision: str = "fp32"
         ) -> Predictor:
    """A predictor for a run folder or bundle: `engine="torch"` runs the bundle's model in
    PyTorch; `engine="onnx"` runs the run's exported `model.onnx` in ONNX Runtime, in `precision`
    fp32 or bf16 (a classifier's rows close to a change of label recomputed in fp32)."""
    if engine == "onnx":
        from tunesmith.export.onnx import load_onnx_predictor

        return load_onnx_predictor(run_or_bundle, precision)
    if engine != "torch":
        raise TunesmithError(f"unknown engine {engine!r}", field="--engine",
                             fix="use --engine torch or --engine onnx")
    if precision != "fp32":
        raise TunesmithError(f"the torch engine predicts in fp32, not {precision}",
                             field="--precision", fix="add --engine onnx, or leave --precision out")
    return load_predictor(run_or_bundle)


def report(run_dir: str | Path) -> Path:
    """Rebuild `report.html` of a run folder from what the folder holds."""
    return write_report(Path(run_dir))


@dataclass(frozen=True)
class Evaluation:
    source: Path  # the data scored
    rows: int
    scores: dict[str, Any]  # metrics.json's form: {metric: {"value", "ci95"}}
    record: Path  # where the scores were written


def evaluate(run_dir: str | Path, data: str | Path | None = None, *, engine: str = "torch",
             precision: str = "fp32") -> Evaluation:
    """Score a run's bundle on labelled data: the run's own test part (as its config splits it
    again) or `data`, a file or folder in the training data's format and columns. The scores
    and their intervals go to `RUN_DIR/evaluations/NAME.json`. `engine` and `precision` choose
    the model scored as `load` does: with `engine="onnx"`, the exported graph (the file is
    `NAME-onnx.json`, or `NAME-onnx-bf16.json`, beside the bundle's)."""
    folder = Path(run_dir)
    require_run_folder(folder)
    # before any data is read: a run that never finished has no bundle, or no exported graph
    predictor = load(folder, engine=engine, precision=precision)
    config = load_config(folder / "config.yaml")
    if data is not None:  # training rows it holds stay in training (said below), as trained
        config = config.with_values({"data.test": str(Path(data).resolve()),
                                     "data.clean.drop_test_overlap": "none"})
    loaded = _run_data(folder, config, test_replaced=data is not None)
    part = loaded.test
    overlap = sum(f.count for f in loaded.report.findings if f.check == "leakage-test")
    if data is not None and overlap:
        console.print(f"[yellow]{overlap} training row(s) also occur in {data}[/] (exactly or "
                      "nearly): the scores of those rows are not held out, and flatter the model")
    kind = predictor.kind
    _check_labels(part, predictor, kind)
    inputs = _inputs_of(part)
    outputs = predictor.outputs(inputs)
    if kind == "classification":
        outputs = scaled(outputs, predictor.temperature)
    targets = _targets_for(part, predictor.classes, kind)
    scores = scored_with_intervals(kind, outputs, targets, seed=config.seed)
    name = "test" if data is None else Path(data).stem
    if engine != "torch":
        name += f"-{engine}" + ("" if precision == "fp32" else f"-{precision}")
    record = _evaluation_file(folder / "evaluations", name, str(part.source))
    write_json(record, {"data": str(part.source), "rows": len(part), "engine": engine,
                        "precision": precision, "scores": scores,
                        "training_rows_also_in_data": overlap})
    return Evaluation(part.source, len(part), scores, record)


def _run_data(folder: Path, config: Config, *, test_replaced: bool = False) -> TaskData:
    """A finished run's data, split again as its config says. Data moved since the run is named
    with the run's own config as the place to say where it is now (the run's test rows are
    split from it again, and its training rows fit the table's encoding)."""
    for field in ("train", "val", "test"):
        named = getattr(config.data, field)
        if named is None or (field == "test" and test_replaced):
            continue
        path = config.path(named)
        if not path.exists():
            raise TunesmithError(
                "the data this run was fine-tuned on is no longer where it was", file=path,
                field=f"data.{field}",
                fix=f"put it back, or set data.{field} in {folder / 'config.yaml'} to where it "
                "is now")
    return load_task_data(config, test_replaced=test_replaced)


def _evaluation_file(folder: Path, name: str, source: str) -> Path:
    """`NAME.json`, or `NAME-2.json`, ... when that holds another data source's scores: a new
    evaluation never overwrites one of other data (the same data's is brought up to date)."""
    path, count = folder / f"{name}.json", 1
    while path.is_file() and json.loads(path.read_text()).get("data") != source:
        count += 1
        path = folder / f"{name}-{count}.json"
    return path


def export(run_dir: str | Path, format: str = "onnx", *, quantize: bool = False) -> Any:
    """Export a run's bundle: `onnx` writes `RUN_DIR/model.onnx` (checked against PyTorch on the
    run's test rows with ONNX Runtime; bf16's change in a classifier's probabilities measured on
    its validation rows, then training rows; `quantize` adds an int8 graph scored on the test
    rows) and
    `export.json`; `safetensors` checks the bundle's weights and says where they are."""
    from tunesmith.export.bundle import WEIGHTS
    from tunesmith.export.onnx import CALIBRATION_ROWS, export_onnx
    from tunesmith.export.predictor import bundle_folder

    folder = Path(run_dir)
    if format not in ("onnx", "safetensors"):
        raise TunesmithError(f"unknown export format {format!r}", field="--format",
                             fix="use --format onnx or --format safetensors")
    if quantize and format != "onnx":
        raise TunesmithError(f"int8 quantization is for the ONNX graph, not {format}",
                             field="--quantize", fix="add --format onnx, or leave --quantize out")
    bundle = bundle_folder(folder)
    predictor = load_predictor(folder)  # checks the weights against their checksum
    if format == "safetensors":
        return bundle / WEIGHTS
    require_run_folder(folder)
    data = _run_data(folder, load_config(folder / "config.yaml"))
    inputs = _inputs_of(data.test)
    targets = _targets_for(data.test, predictor.classes, predictor.kind)
    # bf16's change in probabilities is a matter of numbers, not labels: the validation rows,
    # then training rows, so that a small validation part still measures it on many rows
    calibration = _first_rows([data.val, data.train], CALIBRATION_ROWS)
    return export_onnx(predictor, folder, inputs, evaluation=(inputs, targets),
                       calibration=calibration, quantize=quantize)


def _inputs_of(part: Examples) -> Any:
    return part.features if part.features is not None else part.inputs


def _first_rows(parts: list[Examples | None], limit: int) -> Any:
    """Up to `limit` inputs of `parts`, in order (a list, or a table's rows)."""
    import pandas as pd

    chosen = [_inputs_of(part)[:limit] for part in parts if part is not None and len(part)]
    if not chosen:
        return None
    if isinstance(chosen[0], pd.DataFrame):
        return pd.concat(chosen).iloc[:limit]
    return [item for rows in chosen for item in rows][:limit]


def _check_labels(part: Examples, predictor: Predictor, kind: str) -> None:
    if kind == "regression":
        return
    known = set(predictor.classes)
    seen = {label for labels in part.labels for label in
            (labels if kind == "multilabel" else [labels])}
    unknown = sorted(str(label) for label in seen - known)
    if unknown:
        raise TunesmithError(
            f"the evaluation data has labels the model never saw: {', '.join(unknown[:10])}"
            + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""),
            file=part.source, field="data.label_column",
            fix="evaluate on data labelled with the model's classes ("
            + ", ".join(predictor.classes[:10]) + (", ..." if len(predictor.classes) > 10 else "")
            + "), or fine-tune on these labels")


def _targets_for(part: Examples, classes: list[str], kind: str) -> np.ndarray:
    """`part`'s targets against the bundle's classes (the ones its outputs are in)."""
    return np.asarray(label_targets(part.labels, classes, kind))
