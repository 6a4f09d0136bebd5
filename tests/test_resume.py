"""A run killed with SIGKILL mid-epoch resumes from its last checkpoint and ends exactly where an
uninterrupted run of the same config ends; bad resumes stop with one clear message.

The killed runs are real `tunesmith run` processes, killed as soon as a checkpoint from the middle
of an epoch is on disk; `tunesmith run --resume` then finishes them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from conftest import IMAGE_TRAIN, TEXT_EXTRA, TEXT_TRAIN, CliResult, config_dict, logged, write_yaml
from test_cli import assert_user_error
from tunesmith.io import one_run_at_a_time

Cli = Callable[[Sequence[str | Path]], CliResult]
KILL_TIMEOUT_S = 120


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich folds lines at 80 columns; a wide console keeps each message on one line."""
    monkeypatch.setenv("COLUMNS", "2000")


def start(config: Path, *args: str) -> subprocess.Popen[str]:
    script = Path(sys.executable).with_name("tunesmith")
    return subprocess.Popen(
        [str(script), "run", str(config), *args], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def kill_when(process: subprocess.Popen[str], checkpoint: Path) -> None:
    """SIGKILL `process` as soon as `checkpoint` is on disk."""
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while not checkpoint.exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, f"no {checkpoint} after {KILL_TIMEOUT_S} s"
        time.sleep(0.02)
    process.kill()
    process.wait()


def run_config(folder: Path, name: str, **extra: Any) -> Path:
    raw = config_dict(folder, name=name, **extra)
    return write_yaml(folder / f"{name}.yaml", raw)


def comparable(run_dir: Path) -> dict[str, Any]:
    """What two runs that went the same way agree on (everything but timings)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    epochs = [{k: v for k, v in line.items() if k != "train_samples_per_s"}
              for line in logged(run_dir / "trials/0")]
    return {"test": metrics["test"], "val": metrics["val"], "epochs": epochs,
            "best_epoch": metrics["train"]["best_epoch"], "steps": metrics["train"]["steps"]}


def assert_same_weights(first: Path, second: Path) -> None:
    a, b = (load_file(str(run / "best" / "model.safetensors")) for run in (first, second))
    assert a.keys() == b.keys()
    assert [key for key in a if not torch.equal(a[key], b[key])] == []


CASES = {
    # 300 texts: 12 steps an epoch; killed at step 20, in the middle of epoch 2.
    "text-full": ("train", 20, lambda tiny_bert, text_csv, image_folder, timm: {
        "data_path": text_csv, "backbone": f"hf:{tiny_bert}",
        "train_settings": {**TEXT_TRAIN, "epochs": 4, "checkpoint_steps": 5}, **TEXT_EXTRA}),
    # Images with random crops and a weight average, lp-ft: killed in its fine-tuning stage
    # (6 steps an epoch), at step 8, after a probe stage that is not run again.
    "image-lp-ft": ("train", 8, lambda tiny_bert, text_csv, image_folder, timm: {
        "data_path": image_folder, "backbone": f"timm:{timm[0]}?weights={timm[1]}",
        "train_settings": {**IMAGE_TRAIN, "epochs": 3, "checkpoint_steps": 4,
                           "probe_epochs": 5},
        "model": {"strategy": "lp-ft"}, "data": {"augment": {"preset": "light"}}}),
    # A network from random weights, whose batch norms measure their statistics again before
    # each evaluation: killed at the checkpoint of epoch 2's last step, before its evaluation.
    "image-random": ("train", 12, lambda tiny_bert, text_csv, image_folder, timm: {
        "data_path": image_folder, "backbone": "scratch:cnn",
        "train_settings": {**IMAGE_TRAIN, "epochs": 3, "checkpoint_steps": 6}}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_run_killed_mid_epoch_resumes_to_the_same_end(
    case: str, tiny_bert: Path, text_csv: Path, image_folder: Path,
    tiny_timm_weights: tuple[str, Path], run_cli: Cli, tmp_path: Path,
) -> None:
    stage, step, settings = CASES[case]
    extra = settings(tiny_bert, text_csv, image_folder, tiny_timm_weights)
    reference = run_config(tmp_path, "reference", **extra)
    assert run_cli(["run", reference]).code == 0
    config = run_config(tmp_path, "killed", **extra)
    trial = tmp_path / "runs" / "killed" / "trials" / "0"
    kill_when(start(config), trial / "checkpoints" / stage / f"step-{step:08d}")
    assert not (trial.parent.parent / "metrics.json").exists()  # killed before the end

    result = run_cli(["run", config, "--resume"])
    assert result.code == 0, result.err[-3000:]
    assert "resumed from" in result.err
    first, second = tmp_path / "runs" / "reference", tmp_path / "runs" / "killed"
    expected, got = comparable(first), comparable(second)
    assert len(got["epochs"]) == len(expected["epochs"])
    for ours, theirs in zip(got["epochs"], expected["epochs"], strict=True):
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():  # within 1e-6 as asked; on this CPU, fp32: exactly
            assert ours[key] == (pytest.approx(value, abs=1e-6)
                                 if isinstance(value, float) else value), key
    assert got == expected
    assert_same_weights(first, second)
    # the run's wall time holds the training before the kill (it held the resumed part alone)
    metrics = json.loads((second / "metrics.json").read_text())
    assert metrics["wall_s"] >= metrics["train"]["wall_s"] > 0
    # Every step is logged once: what the killed run logged after its checkpoint was dropped.
    steps = [line["step"] for line in logged(second / "trials/0", "step") if line["stage"] == stage]
    assert steps == list(range(1, expected["steps"] + 1))


@pytest.fixture
def killed_text_run(text_config: Callable[..., Path], tmp_path: Path) -> tuple[Path, Path]:
    """A text run killed at step 20 (mid epoch 2), its checkpoints at 15 and 20 on disk."""
    config = text_config("killed", train={"epochs": 4, "checkpoint_steps": 5})
    trial = tmp_path / "runs" / "killed" / "trials" / "0"
    kill_when(start(config), trial / "checkpoints" / "train" / "step-00000020")
    return config, trial


@pytest.mark.parametrize("damaged", ["tensors.safetensors", "best.safetensors"])
def test_a_corrupted_checkpoint_falls_back_to_the_one_before(
    killed_text_run: tuple[Path, Path], text_config: Callable[..., Path], run_cli: Cli,
    damaged: str,
) -> None:
    config, trial = killed_text_run
    newest = trial / "checkpoints" / "train" / "step-00000020" / damaged
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.unlink()  # this checkpoint's copy alone (the best weights may be a shared hard link)
    newest.write_bytes(bytes(data))
    result = run_cli(["run", config, "--resume"])
    assert result.code == 0, result.err[-3000:]
    assert "step-00000020 cannot be read" in result.err and "checksum" in result.err
    assert damaged in result.err
    assert "resumed from" in result.err and "step-00000015" in result.err
    reference = text_config("reference", train={"epochs": 4, "checkpoint_steps": 5})
    assert run_cli(["run", reference]).code == 0
    assert comparable(trial.parent.parent) == comparable(reference.parent / "runs" / "reference")


def test_resume_with_another_config_says_what_differs(
    killed_text_run: tuple[Path, Path], text_config: Callable[..., Path], run_cli: Cli,
) -> None:
    config, _ = killed_text_run
    result = run_cli(["run", config, "--resume", "--set", "train.lr=0.003"])
    assert_user_error(result, config, "--resume", "was made with another config",
                      "train.lr: 0.002 -> 0.003")


def test_a_checkpoint_whose_optimizer_groups_do_not_fit_the_model_is_refused(
    killed_text_run: tuple[Path, Path], run_cli: Cli,
) -> None:
    """A checkpoint written where the model's parameters were cut into other groups (an older
    tunesmith's blocks) names itself and the way out, not torch's ValueError."""
    config, trial = killed_text_run
    newest = trial / "checkpoints" / "train" / "step-00000020"
    for folder in newest.parent.glob("step-*"):
        state = json.loads((folder / "state.json").read_text())
        groups = state["optimizer"]["param_groups"]
        groups[0]["params"] += groups.pop(1)["params"]  # two groups saved as one
        (folder / "state.json").write_text(json.dumps(state))
    result = run_cli(["run", config, "--resume"])
    assert result.code == 2 and "Traceback" not in result.err, result.err[-2000:]
    message = result.err[result.err.index("error: "):]  # after the run's own header line
    assert message.count("error: ") == 1
    for part in (newest, "--resume", "optimizer state does not fit this model's parameter groups",
                 "fix: run without --resume"):
        assert str(part) in message, (part, message)


def test_resume_without_a_checkpoint(killed_text_run: tuple[Path, Path],
                                     text_config: Callable[..., Path], run_cli: Cli) -> None:
    import shutil

    config, trial = killed_text_run
    shutil.rmtree(trial / "checkpoints")
    assert_user_error(run_cli(["run", config, "--resume"]), trial, "--resume",
                      "there is no checkpoint to resume from", "run without --resume")
    never_run = text_config("never-run")
    assert_user_error(run_cli(["run", never_run, "--resume"]), never_run, "--resume",
                      "there is no run to resume")


def test_resuming_a_finished_run_changes_nothing(text_config: Callable[..., Path],
                                                 run_cli: Cli) -> None:
    config = text_config("done", train={"epochs": 2})
    assert run_cli(["run", config]).code == 0
    run_dir = config.parent / "runs" / "done"
    before = (run_dir / "metrics.json").read_text()
    result = run_cli(["run", config, "--resume"])
    assert result.code == 0 and "finished already" in result.err
    assert (run_dir / "metrics.json").read_text() == before


def test_a_run_killed_after_early_stopping_resumes_to_the_same_end(
    text_config: Callable[..., Path], run_cli: Cli
) -> None:
    """Killed after training stopped early (its last checkpoint is the stop), before the model
    card and the report: the resumed run trains nothing more, ends as the unbroken run did, and
    writes what was missing. The kill is laid down by removing what the run writes after its
    last checkpoint: its metrics, card, report and predictions."""
    train = {"epochs": 30, "patience": 1, "checkpoint_steps": 5}
    reference = text_config("reference", train=train)
    assert run_cli(["run", reference]).code == 0
    first = reference.parent / "runs" / "reference"
    assert json.loads((first / "metrics.json").read_text())["train"]["stopped"] == "early stopping"

    config = text_config("killed", train=train)
    assert run_cli(["run", config]).code == 0
    second = config.parent / "runs" / "killed"
    card = second / "best" / "README.md"
    for name in ("metrics.json", "report.html", "predictions.npz", "test_predictions.csv"):
        (second / name).unlink()
    card.unlink()
    result = run_cli(["run", config, "--resume"])
    assert result.code == 0, result.err[-3000:]
    assert "resumed from" in result.err and "finished already" not in result.err
    assert comparable(second) == comparable(first)  # no epoch trained after the stop
    assert_same_weights(first, second)
    # The training time counts the process that trained, not only the one that resumed.
    last = sorted((second / "trials/0/checkpoints/train").glob("step-*"))[-1]
    spent = json.loads((last / "state.json").read_text())["spent_s"]
    assert json.loads((second / "metrics.json").read_text())["train"]["wall_s"] >= round(spent, 1)
    assert card.is_file() and (second / "report.html").is_file()

    (second / "report.html").unlink()  # killed after its metrics, before its report
    result = run_cli(["run", config, "--resume"])
    assert result.code == 0 and "finished already" not in result.err
    assert (second / "report.html").is_file()
    assert comparable(second) == comparable(first)


def test_a_second_run_of_the_same_name_is_refused_while_the_first_runs(
    text_config: Callable[..., Path], run_cli: Cli
) -> None:
    """It used to move the running run's folder aside and write into a new one, and the first
    run went on writing into the second's: two runs' files mixed in one folder."""
    config = text_config("busy", train={"epochs": 200, "patience": None, "checkpoint_steps": 5})
    run_dir = config.parent / "runs" / "busy"
    first = start(config)
    try:
        checkpoints = run_dir / "trials" / "0" / "checkpoints" / "train"
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while not any(checkpoints.glob("step-*")):  # training, its folder in use
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        result = run_cli(["run", config])
        assert_user_error(result, f"{run_dir}: name: another tunesmith run is writing this run "
                          f"folder (pid {first.pid} on")
        assert_user_error(run_cli(["run", config, "--resume"]), "another tunesmith run")
        assert first.poll() is None  # untouched: still running, in its own folder
        assert [p.name for p in run_dir.parent.iterdir() if p.name[0] != "."] == ["busy"]
    finally:
        first.kill()
        first.wait()
    with one_run_at_a_time(run_dir):  # a killed run holds nothing: its lock went with it
        pass


def test_a_library_that_cannot_write_raises_the_oserror_it_met(tmp_path: Path) -> None:
    """safetensors says 'No space left on device (os error 28)' in an error of its own: the
    command line turns OSErrors of a full disk into one message, not a traceback."""
    import errno

    from tunesmith.io import writing

    target = tmp_path / "model.safetensors"
    with pytest.raises(OSError) as caught, writing(target):
        raise RuntimeError("Error while serializing: I/O error: No space left on device "
                           "(os error 28)")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    with pytest.raises(KeyError), writing(target):  # not a write that failed: as it was
        raise KeyError("weight")
