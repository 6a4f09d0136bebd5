"""Training throughput against the peers a practitioner would otherwise use, in one script.

    python examples/sentiment/prepare.py && python examples/digits/prepare.py
    python benchmarks/throughput.py [--parts rates text image memory] [--trainer-epochs 3]
    python benchmarks/throughput.py --parts text-seeds --seeds 1 2   # accuracy over more seeds

Every arm trains on the same rows of the same split (tunesmith's seeded train part of the example,
itself the benchmark protocol's 80% part less 10% for validation) on this machine, one after the
other in this process, and is scored on the same validation rows:

  rates    the machine's fp32 and bf16 matrix-product rates (2048^3, torch's threads), the
           denominators of model FLOP utilization (MFU).
  text     MiniLM on Rotten Tomatoes. Peer: the Hugging Face Trainer with its defaults (fp32,
           batch 8, lr 5e-5, 3 epochs, max length 128, dynamic padding), then the same Trainer
           with bf16=True (for a few steps when this CPU emulates bf16: at 1/20 of the fp32
           rate three epochs would take hours; its accuracy is then not measured). tunesmith:
           `tunesmith run` of the sentiment example, its recipe untouched.
  image    EfficientNet-Lite0 on MNIST-5k at 64x64. Peer: a plain fp32 PyTorch loop (torchvision
           decoding and resizing in the loop's process, NCHW, Adam 1e-3, batch 64). tunesmith:
           the digits example with its recipe, for as many epochs as the peer.
  memory   the peak resident memory of a process training MiniLM at batch 32, and the resident
           memory of one process across 20 consecutive trials.

Samples/s count training passes only (evaluations excluded, as the Trainer's figure does);
MFU = model FLOPs per training sample (counted with torch's FlopCounterMode: forward and
backward) x samples/s / the measured matrix-product rate. Prints one JSON record per arm and a
Markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesmith import api
from tunesmith.config import load_config
from tunesmith.train.precision import cpu_bf16_is_fast

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TEXT_CONFIG = EXAMPLES / "sentiment" / "config.yaml"
IMAGE_CONFIG = EXAMPLES / "digits" / "config.yaml"
MINILM = EXAMPLES / "sentiment" / "models" / "all-MiniLM-L6-v2"
LITE0 = EXAMPLES / "digits" / "models" / "tf_efficientnet_lite0.safetensors"
BF16_PROBE_STEPS = 20  # Trainer steps with bf16 where the CPU emulates it


# ----------------------------------------------------------------------------------------------
# machine


def matmul_rate(dtype: torch.dtype, seconds: float = 2.0) -> tuple[float, int]:
    """(GFLOP/s, size) of size^3 matrix products in `dtype` on torch's threads: 2048, or 1024
    where one 2048 product would take more than `seconds` (emulated bf16 runs at 1/200 of fp32
    on CPUs without bf16 units)."""

    def timed(size: int, repeats: int) -> float:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9

    estimate = max(timed(512, 3) for _ in range(2))
    size = 2048 if 2 * 2048**3 / (estimate * 1e9) < seconds else 1024
    repeats = max(1, int(seconds * estimate * 1e9 / (2 * size**3) / 3))
    return max(timed(size, repeats) for _ in range(3)), size  # the best of 3: the peak


def rates() -> dict[str, Any]:
    fp32, fp32_size = matmul_rate(torch.float32)
    bf16, bf16_size = matmul_rate(torch.bfloat16)
    return {
        "arm": "machine",
        "threads": torch.get_num_threads(),
        "fp32_gflops": round(fp32, 1),
        "bf16_gflops": round(bf16, 1),
        "matmul_sizes": [fp32_size, bf16_size],
        "cpu_bf16_is_fast": cpu_bf16_is_fast(),
    }


def training_flops(model: torch.nn.Module, forward: Any) -> float:
    """FLOPs of training on one sample: 3x those of its forward pass (the backward pass costs
    about twice the forward), as torch's FlopCounterMode counts the forward. Its backward counts
    are not used: they count grouped convolutions as dense ones."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        samples = forward(model)
    return 3 * float(counter.get_total_flops()) / samples


def bf16_is_fast(machine: dict[str, Any]) -> bool:
    """Whether bf16 runs on real matrix units here (a GPU, or a CPU whose bf16 beats fp32)."""
    return torch.cuda.is_available() or bool(machine["cpu_bf16_is_fast"])


def mfu(flops_per_sample: float, samples_per_s: float, gflops: float) -> float:
    return flops_per_sample * samples_per_s / (gflops * 1e9)


# ----------------------------------------------------------------------------------------------
# tunesmith arms


def tunesmith_arm(config: Path, overrides: list[str], workdir: Path, name: str) -> dict[str, Any]:
    started = time.perf_counter()
    summary = api.fit(load_config(config, [*overrides, f"name={name}", f"output_dir={workdir}"]))
    wall = time.perf_counter() - started
    epochs = [line for line in _lines(summary.run_dir / "trials" / "0" / "metrics.jsonl")
              if line["event"] == "epoch" and line["stage"] == "train"]
    # Equal epochs: total samples / total time is the harmonic mean of the epochs' rates.
    rate = len(epochs) / sum(1.0 / line["train_samples_per_s"] for line in epochs)
    metrics = summary.metrics
    return {
        "samples_per_s": round(rate, 1),
        "epochs": len(epochs),
        "val_accuracy": round(epochs[-1]["val_accuracy"], 4),
        "val_accuracy_by_epoch": [round(line["val_accuracy"], 4) for line in epochs],
        "best_val_accuracy": round(metrics["val"]["accuracy"]["value"], 4),
        "test_accuracy": round(metrics["test"]["accuracy"]["value"], 4),
        "precision": metrics["train"]["precision"],
        "run_wall_s": round(wall, 1),
        "run_dir": str(summary.run_dir),
    }


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tunesmith_flops(config: Path, overrides: list[str]) -> float:
    """Training FLOPs per sample of tunesmith's model on its own first batches."""
    from tunesmith.models.losses import make_loss
    from tunesmith.search import train_settings

    prepared = api.prepare(load_config(config, overrides))
    settings = train_settings(prepared.config, kind=prepared.kind)
    model = api.task_model(prepared).train()
    loss_fn = make_loss(settings.loss)
    loader = api.batches_for(prepared, settings.batch_size, settings.seed).train
    batches = [batch for _, batch in zip(range(8), loader, strict=False)]

    def forward(network: torch.nn.Module) -> int:
        for batch in batches:
            loss_fn(network(batch).float(), batch["labels"])
        return sum(len(batch["labels"]) for batch in batches)

    return training_flops(model, forward)


def split(config: Path) -> tuple[api.Prepared, dict[str, tuple[list[Any], list[int]]]]:
    prepared = api.prepare(load_config(config))
    data = prepared.data
    parts = {name: (list(prepared.inputs(part)), [int(t) for t in data.targets(part)])
             for name, part in (("train", data.train), ("val", data.val), ("test", data.test))}
    return prepared, parts


# ----------------------------------------------------------------------------------------------
# text: the Hugging Face Trainer


def trainer_arm(
    parts: dict[str, tuple[list[Any], list[int]]], workdir: Path, *, bf16: bool,
    epochs: float, max_steps: int = -1, seed: int = 0, flops: bool = True,
    predictions: bool = False,
) -> dict[str, Any]:
    """The Trainer with its defaults on parts["train"], scored on val and test; `predictions`
    adds each part's predicted classes (key "predicted")."""
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )
    from transformers.utils import logging

    logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(MINILM)

    def dataset(name: str) -> Any:
        texts, labels = parts[name]
        return Dataset.from_dict({"text": texts, "label": labels}).map(
            lambda rows: tokenizer(rows["text"], truncation=True, max_length=128),
            batched=True, remove_columns=["text"],
        )

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(MINILM, num_labels=2)
    args = TrainingArguments(
        str(workdir / f"trainer-{'bf16' if bf16 else 'fp32'}"),
        per_device_train_batch_size=8, num_train_epochs=epochs, max_steps=max_steps,
        bf16=bf16, use_cpu=not torch.cuda.is_available(), report_to="none",
        save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True,
        seed=seed,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset("train"),
                      data_collator=DataCollatorWithPadding(tokenizer))
    started = time.perf_counter()
    output = trainer.train()
    record: dict[str, Any] = {
        "samples_per_s": round(float(output.metrics["train_samples_per_second"]), 1),
        "precision": "bf16" if bf16 else "fp32",
        "steps": int(output.global_step),
        "train_wall_s": round(time.perf_counter() - started, 1),
    }
    if max_steps < 0:  # a whole run: score it
        for name in ("val", "test"):
            predicted = trainer.predict(dataset(name)).predictions.argmax(-1)
            labels = np.asarray(parts[name][1])
            record[f"{name}_accuracy"] = round(float((predicted == labels).mean()), 4)
            if predictions:
                record.setdefault("predicted", {})[name] = predicted.tolist()
    if not flops:
        return record
    batches = [batch for _, batch in zip(range(8), trainer.get_train_dataloader(), strict=False)]

    def forward(network: torch.nn.Module) -> int:
        for batch in batches:
            network(**{key: value.to(network.device) for key, value in batch.items()})
        return sum(len(batch["labels"]) for batch in batches)

    record["flops_per_sample"] = training_flops(model.float(), forward)
    return record


def text(workdir: Path, machine: dict[str, Any], trainer_epochs: float) -> list[dict[str, Any]]:
    _, parts = split(TEXT_CONFIG)
    records = []
    peer = trainer_arm(parts, workdir, bf16=False, epochs=trainer_epochs)
    records.append({"arm": "text: HF Trainer fp32", **peer})
    fast_bf16 = bf16_is_fast(machine)
    bf16 = trainer_arm(parts, workdir, bf16=True, epochs=trainer_epochs,
                       max_steps=-1 if fast_bf16 else BF16_PROBE_STEPS)
    note = "" if fast_bf16 else f"{BF16_PROBE_STEPS} steps: bf16 is emulated on this CPU"
    records.append({"arm": "text: HF Trainer bf16", **bf16, "note": note})
    ours = tunesmith_arm(TEXT_CONFIG, [], workdir, "throughput-text")
    ours["flops_per_sample"] = tunesmith_flops(TEXT_CONFIG, [])
    ours["over_trainer_fp32"] = round(ours["samples_per_s"] / peer["samples_per_s"], 2)
    ours["over_trainer_bf16"] = round(ours["samples_per_s"] / bf16["samples_per_s"], 2)
    ours["val_accuracy_minus_trainer"] = round(ours["val_accuracy"] - peer["val_accuracy"], 4)
    records.append({"arm": "text: tunesmith", **ours})
    return with_mfu(records, machine)


def with_mfu(records: list[dict[str, Any]], machine: dict[str, Any]) -> list[dict[str, Any]]:
    """Each record's model FLOP utilization against the fp32 and bf16 matrix-product rates;
    against an emulated bf16 rate (a CPU without bf16 units) the ratio means nothing: None."""
    fast_bf16 = bf16_is_fast(machine)
    for record in records:
        rate = record["flops_per_sample"], record["samples_per_s"]
        record["mfu_fp32"] = round(mfu(*rate, machine["fp32_gflops"]), 3)
        record["mfu_bf16"] = round(mfu(*rate, machine["bf16_gflops"]), 3) if fast_bf16 else None
    return records


def text_seeds(workdir: Path, seeds: list[int], trainer_epochs: float) -> list[dict[str, Any]]:
    """Accuracy over several seeds (the seed moves val accuracy on 390 rows by about as much as
    the 1-point tolerance): the fp32 Trainer and tunesmith with `seed=N`, same split."""
    _, parts = split(TEXT_CONFIG)
    records: list[dict[str, Any]] = []
    for seed in seeds:
        peer = trainer_arm(parts, workdir, bf16=False, epochs=trainer_epochs, seed=seed,
                           flops=False)
        records.append({"arm": f"text: HF Trainer fp32, seed {seed}", **peer})
        ours = tunesmith_arm(TEXT_CONFIG, [f"seed={seed}"], workdir, f"throughput-text-{seed}")
        ours["over_trainer_fp32"] = round(ours["samples_per_s"] / peer["samples_per_s"], 2)
        records.append({"arm": f"text: tunesmith, seed {seed}", **ours})
    for who in ("HF Trainer fp32", "tunesmith"):
        mine = [r for r in records if r["arm"].startswith(f"text: {who},")]
        records.append({
            "arm": f"text: {who}, mean of seeds {seeds}",
            "samples_per_s": round(float(np.mean([r["samples_per_s"] for r in mine])), 1),
            "val_accuracy": round(float(np.mean([r["val_accuracy"] for r in mine])), 4),
            "test_accuracy": round(float(np.mean([r["test_accuracy"] for r in mine])), 4),
        })
    return records


# ----------------------------------------------------------------------------------------------
# image: a plain PyTorch loop


def plain_image_arm(
    parts: dict[str, tuple[list[Any], list[int]]], epochs: int, *, predictions: bool = False
) -> dict[str, Any]:
    """What a practitioner writes from the timm and torchvision docs: decode and resize in the
    loop's process, NCHW, fp32, Adam, no augmentation, no averaging. Trained on parts["train"],
    scored on val (and test, with `predictions`, which adds each part's predicted classes)."""
    import timm
    from PIL import Image
    from safetensors.torch import load_file
    from torchvision.transforms import v2

    transform = v2.Compose([
        v2.PILToTensor(), v2.RGB(), v2.Resize((64, 64), antialias=True),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3),
    ])

    class Images(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
        def __init__(self, name: str) -> None:
            self.paths, self.labels = parts[name]

        def __len__(self) -> int:
            return len(self.paths)

        def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
            with Image.open(self.paths[index]) as image:
                return transform(image), self.labels[index]

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=10)
    state = {k: v for k, v in load_file(LITE0).items() if not k.startswith("classifier.")}
    model.load_state_dict(state, strict=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(Images("train"), batch_size=64, shuffle=True)
    seconds, samples = 0.0, 0
    for _ in range(epochs):
        model.train()
        started = time.perf_counter()
        for pixels, labels in loader:
            loss = torch.nn.functional.cross_entropy(model(pixels), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            samples += len(labels)
        seconds += time.perf_counter() - started
    model.eval()
    predicted: dict[str, list[int]] = {}
    with torch.no_grad():
        for name in ("val", "test") if predictions else ("val",):
            predicted[name] = [
                int(p) for pixels, _ in torch.utils.data.DataLoader(Images(name), batch_size=256)
                for p in model(pixels).argmax(-1)
            ]
    accuracy = {f"{name}_accuracy": round(float(np.mean(np.asarray(p) == parts[name][1])), 4)
                for name, p in predicted.items()}
    pixels, _ = next(iter(loader))

    def forward(network: torch.nn.Module) -> int:
        network(pixels)
        return len(pixels)

    flops = training_flops(model.train(), forward)
    return {
        "samples_per_s": round(samples / seconds, 1),
        "precision": "fp32",
        "epochs": epochs,
        **accuracy,
        "flops_per_sample": flops,
        **({"predicted": predicted} if predictions else {}),
    }


def image(workdir: Path, machine: dict[str, Any], epochs: int) -> list[dict[str, Any]]:
    _, parts = split(IMAGE_CONFIG)
    peer = plain_image_arm(parts, epochs)
    overrides = [f"train.epochs={epochs}"]
    ours = tunesmith_arm(IMAGE_CONFIG, overrides, workdir, "throughput-image")
    ours["flops_per_sample"] = tunesmith_flops(IMAGE_CONFIG, overrides)
    ours["over_plain_loop"] = round(ours["samples_per_s"] / peer["samples_per_s"], 2)
    records = [{"arm": "image: plain PyTorch loop", **peer}, {"arm": "image: tunesmith", **ours}]
    return with_mfu(records, machine)


# ----------------------------------------------------------------------------------------------
# memory


def resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


PEAK_SCRIPT = """
import resource, sys
from tunesmith import api
from tunesmith.config import load_config
api.fit(load_config(sys.argv[1], sys.argv[2:]))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def memory(workdir: Path, trials: int) -> list[dict[str, Any]]:
    # Peak: a process of its own, so nothing this one loaded counts.
    overrides = ["train.batch_size=32", "train.epochs=1", "name=peak", f"output_dir={workdir}"]
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(TEXT_CONFIG), *overrides],
                          capture_output=True, text=True, check=True)
    peak_mib = int(done.stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux
    # Consecutive trials, as a search runs them: a fresh model, loader and loop each time.
    from tunesmith.search import strategy_plan, train_settings
    from tunesmith.train.stages import fine_tune

    prepared = api.prepare(load_config(TEXT_CONFIG, ["train.epochs=1", "train.time_budget=8"]))
    settings = train_settings(prepared.config, kind=prepared.kind)
    plan = strategy_plan(prepared.config, settings)
    after: list[float] = []
    for trial in range(trials):
        model = api.task_model(prepared)
        batches = api.batches_for(prepared, settings.batch_size, settings.seed + trial)
        fine_tune(model, batches, settings, plan, workdir / "trials" / str(trial))
        del model, batches
        gc.collect()
        after.append(resident_mib())
    return [
        {"arm": "memory: MiniLM training, batch 32", "peak_rss_mib": round(peak_mib)},
        {"arm": f"memory: {trials} consecutive trials", "rss_after_first_mib": round(after[0]),
         "rss_after_last_mib": round(after[-1]),
         "growth": round(after[-1] / after[0] - 1, 4), "rss_mib": [round(m) for m in after],
         "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)},
    ]


# ----------------------------------------------------------------------------------------------


def table(records: list[dict[str, Any]]) -> str:
    lines = ["| arm | precision | samples/s | ratio | val accuracy | MFU (fp32 / bf16 rate) |",
             "|---|---|---|---|---|---|"]
    for r in records:
        if "samples_per_s" not in r:
            continue
        ratio = r.get("over_trainer_fp32") or r.get("over_plain_loop") or ""
        if "over_trainer_bf16" in r:
            ratio = f"{ratio} (fp32 Trainer) / {r['over_trainer_bf16']} (bf16 Trainer)"
        mfus = "–" if "mfu_fp32" not in r else f"{r['mfu_fp32']:.3f}" + (
            f" / {r['mfu_bf16']:.3f}" if r.get("mfu_bf16") else "")
        lines.append(f"| {r['arm']} | {r.get('precision', '–')} | {r['samples_per_s']} | {ratio} | "
                     f"{r.get('val_accuracy', '–')} | {mfus} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["rates", "text", "image", "memory"])
    parser.add_argument("--trainer-epochs", type=float, default=3.0)
    parser.add_argument("--image-epochs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2],
                        help="seeds of the text-seeds part")
    args = parser.parse_args()
    records: list[dict[str, Any]] = []
    machine = rates()
    print(json.dumps(machine), flush=True)
    records.append(machine)
    runs = {
        "text": lambda workdir: text(workdir, machine, args.trainer_epochs),
        "image": lambda workdir: image(workdir, machine, args.image_epochs),
        "memory": lambda workdir: memory(workdir, args.trials),
        "text-seeds": lambda workdir: text_seeds(workdir, args.seeds, args.trainer_epochs),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for part, run in runs.items():
            if part not in args.parts:
                continue
            for record in run(Path(tmp) / part):
                record.pop("run_dir", None)
                print(json.dumps(record), flush=True)
                records.append(record)
    print(table(records))


if __name__ == "__main__":
    main()
