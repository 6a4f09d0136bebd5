"""Data parallel: one trial as 2 CPU processes (gloo), launched the way a user launches it, ends
where the single-process run with the same global batch ends.

The tiny BERT here has no dropout, so nothing random differs between one process and two: each
process trains on half of every batch, DDP averages the gradients, and the weights follow the
single-process ones up to the order of floating-point sums.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from conftest import TEXT_EXTRA, TEXT_TRAIN, CliResult, config_dict, logged, write_yaml

Cli = Callable[[Sequence[str | Path]], CliResult]


@pytest.fixture
def bert_without_dropout(tiny_bert: Path, tmp_path: Path) -> Path:
    folder = Path(shutil.copytree(tiny_bert, tmp_path / "bert"))
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def launch(processes: int, *args: str | Path) -> subprocess.CompletedProcess[str]:
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "29517", "-m", "tunesmith", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def test_two_processes_match_one_with_the_same_global_batch(
    bert_without_dropout: Path, text_csv: Path, run_cli: Cli, tmp_path: Path
) -> None:
    settings = {**TEXT_TRAIN, "epochs": 3, "ema": None}
    raw = config_dict(tmp_path, data_path=text_csv, backbone=f"hf:{bert_without_dropout}",
                      train_settings=settings, name="single", model={"head": {"dropout": 0.0}},
                      **TEXT_EXTRA)
    single = write_yaml(tmp_path / "single.yaml", raw)
    assert run_cli(["run", single]).code == 0
    parallel = write_yaml(tmp_path / "parallel.yaml", {**raw, "name": "parallel"})
    finished = launch(2, "run", parallel)
    assert finished.returncode == 0, finished.stderr[-3000:]
    # One process talks and writes: one summary, one run folder, each step logged once.
    assert finished.stderr.count("run folder:") + finished.stdout.count("run folder:") == 1
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["parallel", "single"]
    one, two = (logged(tmp_path / "runs" / name / "trials/0") for name in ("single", "parallel"))
    assert len(one) == len(two) == 3
    for a, b in zip(one, two, strict=True):
        assert b["step"] == a["step"] == 12 * a["epoch"]  # 192 rows, global batch 16
        for key in ("val_loss", "train_loss", "val_accuracy"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), key
    steps = [line["step"] for line in logged(tmp_path / "runs/parallel/trials/0", "step")]
    assert steps == list(range(1, 37))
    first, second = (json.loads((tmp_path / "runs" / name / "metrics.json").read_text())
                     for name in ("single", "parallel"))
    assert second["test"]["accuracy"]["value"] == pytest.approx(
        first["test"]["accuracy"]["value"], abs=1e-12)


def test_gradual_unfreezing_is_refused_across_processes(
    text_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = text_config("gradual", model={"strategy": "gradual-unfreeze"}, train={"epochs": 2})
    finished = launch(2, "run", config)
    assert finished.returncode != 0
    assert "gradual-unfreeze changes which weights train between epochs" in finished.stderr
    assert "fix: run gradual-unfreeze in one process" in finished.stderr
    # The launcher reports its failed child with a traceback of its own; none is tunesmith's.
    assert re.search(r'File "[^"]*/tunesmith/', finished.stderr) is None
