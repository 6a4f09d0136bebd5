"""The command line. It only wires arguments to `tunesmith.api` (`report` to the report module,
which needs no torch); no computing happens here."""

from __future__ import annotations

import errno
import os
import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from tunesmith.errors import DataError, TunesmithError

app = typer.Typer(
    name="tunesmith",
    help="Fine-tune a pretrained model on your dataset: recipe, training, honest test metrics, "
    "a model bundle.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ConfigArg = Annotated[Path, typer.Argument(help="The YAML config of the run.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, e.g. --set train.lr=1e-4 (repeatable)."),
]


@app.command()
def run(
    config: ConfigArg,
    set_: SetOption = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue a killed run from its last checkpoint.")
    ] = False,
) -> None:
    """Fine-tune as the config says: check data, train, evaluate on test once, write the bundle."""
    from tunesmith.api import fit

    summary = fit(config, set_ or [], resume=resume)
    if summary.metrics:  # the main process (the others of a data-parallel run stay quiet)
        typer.echo(f"run folder: {summary.run_dir}")


@app.command()
def search(
    config: ConfigArg,
    storage: Annotated[
        str | None,
        typer.Option(help="The study's storage: postgresql://..., sqlite:///PATH or journal:PATH "
                     "(default: the config's search.storage)."),
    ] = None,
    study: Annotated[
        str | None, typer.Option(help="The study to join (default: search.study, or the name).")
    ] = None,
    set_: SetOption = None,
) -> None:
    """Join a shared study as one more worker: run trials until the study's limits are reached."""
    from tunesmith.api import search_worker

    summary = search_worker(config, set_ or [], storage=storage, study=study)
    record = summary.study
    typer.echo(
        f"study {record['study']}: {record['trials_completed']} completed, "
        f"{record['trials_pruned']} pruned, {record['trials_failed']} failed"
    )


@app.command("lr-find")
def lr_find(
    config: ConfigArg,
    set_: SetOption = None,
    steps: Annotated[int, typer.Option(min=2, help="Training steps of the sweep.")] = 100,
) -> None:
    """Sweep the learning rate up exponentially and suggest one (writes lr_find.png/.json)."""
    from tunesmith import api
    from tunesmith.console import console

    found = api.lr_find(config, set_ or [], steps=steps)
    console.print(f"wrote {found.plot} and {found.record}")
    typer.echo(
        f"suggested: --set train.lr={found.suggested_lr:.2e} "
        f"--set train.head_lr={found.suggested_head_lr:.2e}"
    )


@app.command()
def validate(config: ConfigArg, set_: SetOption = None) -> None:
    """Check config, data and model (one forward pass); nothing is trained or written."""
    from tunesmith import api
    from tunesmith.console import console

    prepared = api.validate(config, set_ or [])
    data = prepared.data
    console.print(
        f"[green]ok[/]: {data.task}, {len(data.classes)} classes, "
        f"{len(data.train)}/{len(data.val)}/{len(data.test)} train/val/test rows, "
        f"backbone {prepared.config.model.backbone} ({prepared.backbone.num_features} features)"
    )
    typer.echo(prepared.config.to_yaml())


@app.command()
def inspect(
    data: Annotated[
        Path,
        typer.Argument(
            help="A CSV/TSV/JSONL/Parquet file, an image folder or manifest, or "
            "a saved Hugging Face dataset."
        ),
    ],
    test: Annotated[Path | None, typer.Option(help="A test file, checked for leakage too.")] = None,
    task: Annotated[str, typer.Option(help="auto, or e.g. text-classification.")] = "auto",
    label_column: Annotated[str, typer.Option(help="The label column.")] = "label",
    text_column: Annotated[str, typer.Option(help="The text column (text tasks).")] = "text",
    label_delimiter: Annotated[
        str | None, typer.Option(help='Multilabel labels joined by this, e.g. "|".')
    ] = None,
    image_column: Annotated[
        str, typer.Option(help="Image manifests and saved datasets: the image column.")
    ] = "image",
    delimiter: Annotated[str | None, typer.Option(help="CSV delimiter.")] = None,
    encoding: Annotated[str, typer.Option(help="Text encoding of the file.")] = "utf-8",
    format: Annotated[
        str, typer.Option(help="auto, csv, tsv, jsonl, parquet, hf-dataset, image-folder, ...")
    ] = "auto",
    out: Annotated[Path, typer.Option(help="Where to write the JSON report.")] = Path(
        "data_report.json"
    ),
) -> None:
    """Check a dataset before training; exit status 1 when a problem makes training meaningless."""
    from tunesmith import api
    from tunesmith.console import console
    from tunesmith.data import fatal_error
    from tunesmith.io import write_json
    from tunesmith.report import data_tables

    options = {
        "label_column": label_column,
        "text_column": text_column,
        "image_column": image_column,
        "encoding": encoding,
        "label_delimiter": label_delimiter,
        "delimiter": delimiter,
        "format": format,
    }
    try:
        report = api.inspect(data, test=test, task=task, **options)
        console.print(data_tables(report.to_json()))
        write_json(out, report.to_json())
        console.print(f"wrote {out}")
        if report.fatal:
            raise fatal_error(report)
    except DataError as error:  # unusable data is inspect's finding (1), not a usage error (2)
        typer.secho(f"error: {_with_flag(error).message}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    except TunesmithError as error:
        raise _with_flag(error) from None


# The config keys `inspect` takes as options: its messages name both.
INSPECT_FLAGS = {
    "task": "--task",
    "data.test": "--test",
    "data.label_column": "--label-column",
    "data.text_column": "--text-column",
    "data.image_column": "--image-column",
    "data.label_delimiter": "--label-delimiter",
    "data.delimiter": "--delimiter",
    "data.encoding": "--encoding",
    "data.format": "--format",
}


def _with_flag(error: TunesmithError) -> TunesmithError:
    """The error with the `inspect` option that sets its field named in the fix; the options'
    own problems (a task or format it does not know) by the option, not the config key."""
    if error.field is None and error.file == "command line":  # inspect_options' source
        problem = error.problem
        for key, option in INSPECT_FLAGS.items():
            problem = re.sub(rf"^(\s+){re.escape(key)}:", rf"\g<1>{option}:", problem,
                             flags=re.MULTILINE)
        return type(error)(problem.replace("the config has", "the options have"),
                           file=error.file, fix="correct the options listed above "
                           "(tunesmith inspect --help lists them)")
    flag = INSPECT_FLAGS.get(error.field or "")
    if flag is None or error.fix is None:
        return error
    fix = f"{error.fix} (on the command line: {flag})"
    return type(error)(error.problem, file=error.file, field=error.field, fix=fix)


EngineOption = Annotated[
    str, typer.Option(help="torch (the bundle), or onnx (the run's exported model.onnx in ONNX "
                      "Runtime).")
]
PrecisionOption = Annotated[
    str, typer.Option(help="With --engine onnx: fp32, or bf16 (rows close to a change of "
                      "label recomputed in fp32).")
]


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (runs/NAME) or a bundle folder.")],
    inputs: Annotated[
        list[Path], typer.Argument(help="CSV/JSONL files of texts, or images and image folders.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Write predictions to this .csv or .jsonl instead of printing them."),
    ] = None,
    engine: EngineOption = "torch",
    precision: PrecisionOption = "fp32",
) -> None:
    """Predict labels and class probabilities with a trained bundle."""
    from tunesmith.api import load
    from tunesmith.export.predictor import (
        check_out,
        gather_inputs,
        predictions_table,
        write_predictions,
    )

    if out is not None:
        check_out(out, inputs)
    predictor = load(run_dir, engine=engine, precision=precision)
    batch = gather_inputs(predictor, inputs)
    table = predictions_table(predictor, batch)
    if out is None:
        typer.echo(table.to_csv(index=False), nl=False)
    else:
        write_predictions(table, out)
        typer.echo(f"wrote {len(table)} predictions to {out}")


RunDirArg = Annotated[Path, typer.Argument(help="A run folder (runs/NAME).")]


@app.command()
def evaluate(
    run_dir: RunDirArg,
    data: Annotated[
        Path | None,
        typer.Option(help="Labelled data in the training data's format and columns (default: "
                     "the run's own test part)."),
    ] = None,
    engine: EngineOption = "torch",
    precision: PrecisionOption = "fp32",
) -> None:
    """Score a run's model on labelled data, with 95% bootstrap intervals."""
    from rich.table import Table

    from tunesmith.api import evaluate as evaluate_run
    from tunesmith.console import console
    from tunesmith.report.summary import scored_text

    found = evaluate_run(run_dir, data, engine=engine, precision=precision)
    table = Table(title=f"{found.source} ({found.rows} rows)", header_style="bold")
    table.add_column("metric")
    table.add_column("value [95% interval]", justify="right")
    for name, score in found.scores.items():
        table.add_row(name, scored_text(score))
    console.print(table)
    typer.echo(f"scores written to {found.record}")


@app.command()
def export(
    run_dir: RunDirArg,
    format: Annotated[str, typer.Option(help="onnx, or safetensors (the bundle's weights).")] = (
        "onnx"),
    quantize: Annotated[
        str | None, typer.Option(help="int8: also a dynamically quantized ONNX graph.")
    ] = None,
) -> None:
    """Export a run's model: an ONNX graph checked against PyTorch with ONNX Runtime."""
    from tunesmith.api import export as export_run
    from tunesmith.errors import TunesmithError as Error
    from tunesmith.report.summary import metric_text

    if quantize not in (None, "int8"):
        raise Error(f"unknown quantization {quantize!r}", field="--quantize",
                    fix="use --quantize int8, or leave it out")
    found = export_run(run_dir, format, quantize=quantize == "int8")
    if format == "safetensors":
        typer.echo(f"weights: {found}")
        return
    typer.echo(f"wrote {found.path}: inputs {', '.join(found.inputs)} -> {found.output}; "
               f"ONNX Runtime matches PyTorch on {found.parity_rows} test inputs within "
               f"{found.parity_max_abs_diff:.1e} ({', '.join(found.providers or [])})")
    if found.bf16 is not None:
        moved = (f"bf16 moves the probabilities by up to {found.bf16['max_abs_diff']:.1e} on "
                 f"{found.bf16['rows']} of the run's inputs (validation, then training): ")
        typer.echo(moved + (
            "too far for --precision bf16 (every row would be recomputed in fp32)"
            if found.bf16["recheck_margin"] >= 1 else
            f"--precision bf16 recomputes in fp32 the rows within "
            f"{found.bf16['recheck_margin']:.3f} of a change of label "
            f"({found.bf16['rechecked_share']:.1%} of them)"))
    if found.int8 is not None:
        change = found.int8.get("change")
        typer.echo(f"wrote {found.int8['path']}" + (
            f": test {found.int8['metric']} {metric_text(found.int8['fp32'])} -> "
            f"{metric_text(found.int8['int8'])} ({metric_text(change, signed=True)})"
            if change is not None else ""))


@app.command()
def report(run_dir: RunDirArg) -> None:
    """Rebuild a run's self-contained report.html from its run folder."""
    # Straight to the report module: it reads the run folder's files and needs neither torch nor
    # the model registry that `tunesmith.api` loads (5 s instead of 16 on a 2-core CPU).
    from tunesmith.report.html import write_report

    typer.echo(f"report: {write_report(Path(run_dir))}")


def main() -> None:
    try:
        app()
    except TunesmithError as error:
        typer.secho(f"error: {error.message}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
    except OSError as error:
        if error.errno not in UNWRITABLE:
            raise
        # A full disk or a folder that cannot be written: what was written before stays (every
        # file is renamed into place whole), so a run can go on with --resume once it can write.
        where = f"{error.filename}: " if error.filename else ""
        typer.secho(f"error: {where}cannot write: {os.strerror(error.errno)}\n  fix: free "
                    "space or give write access there (or set output_dir elsewhere), then run "
                    "again; tunesmith run CONFIG --resume continues a run", fg=typer.colors.RED,
                    err=True)
        sys.exit(2)


# A full disk, a quota, a read-only file system, no permission
UNWRITABLE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
