"""Fine-tuning strategies: exactly the intended parameters get gradients and move, nothing else.

Each strategy runs the real way (config -> prepare -> train settings -> strategy plan -> batches
-> `fine_tune`) on the tiny BERT and the tiny timm ResNet. A `Watch` sees the run from outside
only: a forward hook on the head hooks a gradient recorder onto every parameter that can take a
gradient, a forward hook on the backbone counts the rows it computes, and as the loop's Reporter
it snapshots the live weights after each epoch. What should train is worked out independently of
the code under test, from the blocks the backbone is cut into and the names of the tiny models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunesmith import api
from tunesmith.config import load_config
from tunesmith.errors import TunesmithError
from tunesmith.evaluate import collect_logits
from tunesmith.models.inputs import EvalBatches
from tunesmith.models.strategies import (
    AdapterSettings,
    add_adapter,
    freeze_bottom,
    has_adapter,
    merge_adapter,
)
from tunesmith.models.task_model import TaskModel
from tunesmith.search import strategy_plan, train_settings
from tunesmith.train import Batches, StrategyPlan, TrainSettings, TrialResult, fine_tune
from tunesmith.train.loop import train_trial
from tunesmith.train.optim import parameter_groups
from tunesmith.train.stages import GradualUnfreeze

State = dict[str, torch.Tensor]
NET = "backbone.network."
ADAPTER_MARKS = ("lora_", "hada_")
# The tiny BERT's blocks, by the names of the parameters inside them.
BERT_BLOCKS = ("embeddings.", "encoder.layer.0.", "encoder.layer.1.")


def tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of `model` by name: the live tensors, not copies."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def snapshot(live: dict[str, torch.Tensor]) -> State:
    return {name: tensor.detach().clone() for name, tensor in live.items()}


def changed(before: State, after: State) -> set[str]:
    return {name for name, value in before.items() if not torch.equal(value, after[name])}


def is_adapter(name: str) -> bool:
    return any(mark in name for mark in ADAPTER_MARKS)


class Watch:
    """What a run does to a model: which parameters receive a gradient, how many rows the backbone
    computes, the state at its first full forward, and the live weights after each epoch (as the
    Reporter the loop calls then). Parameters a strategy adds (adapters) are found at the first
    forward pass, before any optimizer step, so their initial values are known."""

    def __init__(self, model: TaskModel) -> None:
        self.model = model
        self.original = tensors(model)  # the live tensors, whatever wraps them later
        self.before = snapshot(self.original)
        self.parameters = {name for name, _ in model.named_parameters()}
        self.names = {id(tensor): name for name, tensor in self.original.items()}
        self.added: dict[str, nn.Parameter] = {}
        self.added_before: State = {}
        self.graded: set[str] = set()
        self.graded_by_epoch: list[set[str]] = []
        self.backbone_calls = 0
        self.backbone_rows = 0
        self.first_model_forward: State | None = None
        self.epochs: list[State] = []
        self._hooked: set[int] = set()
        self._handles: list[Any] = [
            model.head.register_forward_hook(self._on_head),
            model.backbone.register_forward_hook(self._on_backbone),
            model.register_forward_pre_hook(self._on_model),
        ]

    def live(self) -> dict[str, torch.Tensor]:
        return {**self.original, **self.added}

    def current(self) -> State:
        return snapshot(self.live())

    def _on_head(self, module: nn.Module, args: Any, output: Any) -> None:
        for name, parameter in self.model.named_parameters():
            if id(parameter) not in self.names:
                self.names[id(parameter)] = name
                self.added[name] = parameter
                self.added_before[name] = parameter.detach().clone()
            if parameter.requires_grad and id(parameter) not in self._hooked:
                self._hooked.add(id(parameter))
                self._handles.append(parameter.register_post_accumulate_grad_hook(self._graded))

    def _graded(self, parameter: torch.Tensor) -> None:
        self.graded.add(self.names[id(parameter)])

    def _on_backbone(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self.backbone_calls += 1
        self.backbone_rows += output.shape[0]

    def _on_model(self, module: nn.Module, args: Any) -> None:
        if self.first_model_forward is None:
            self.first_model_forward = self.current()

    def start_epoch(self) -> None:
        """For an epoch hook: from here on gradients count towards a new epoch."""
        self.graded = set()
        self.graded_by_epoch.append(self.graded)

    # Reporter
    def report(self, value: float, step: int) -> None:
        self.epochs.append(self.current())

    def should_prune(self) -> bool:
        return False

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


@dataclass
class Run:
    prepared: api.Prepared
    model: TaskModel
    settings: TrainSettings
    plan: StrategyPlan
    batches: Batches
    trial_dir: Path
    watch: Watch
    blocks: list[set[str]]  # the backbone's blocks before training, as parameter names
    block_buffers: list[set[str]]  # the buffers of each block's modules
    head: set[str]
    network_class: type
    result: TrialResult


def names_of(model: nn.Module, objects: Iterator[torch.Tensor]) -> set[str]:
    ids = {id(tensor) for tensor in objects}
    return {name for name, tensor in tensors(model).items() if id(tensor) in ids}


def setup(config: Path, strategy: str, *overrides: str) -> tuple[api.Prepared, TaskModel,
                                                                  TrainSettings, StrategyPlan,
                                                                  Batches]:
    """Config -> prepared data and backbone -> model, settings, plan and batches, as `fit` does."""
    prepared = api.prepare(load_config(config, [f"model.strategy={strategy}", *overrides]))
    model = api.task_model(prepared)
    settings = train_settings(prepared.config, kind=prepared.kind)
    plan = strategy_plan(prepared.config, settings)
    batches = api.batches_for(prepared, settings.batch_size, settings.seed)
    return prepared, model, settings, plan, batches


def run_strategy(config: Path, strategy: str, folder: Path, *overrides: str) -> Run:
    prepared, model, settings, plan, batches = setup(config, strategy, *overrides)
    blocks = model.backbone.blocks()
    block_names = [names_of(model, (p for _, p in b.parameters)) for b in blocks]
    block_buffers = [
        names_of(model, (buf for module in b.modules for buf in module.buffers())) for b in blocks
    ]
    head = names_of(model, model.head.parameters())
    watch = Watch(model)
    network_class = type(model.backbone.network)
    result = fine_tune(model, batches, settings, plan, folder, reporter=watch)
    watch.close()
    return Run(prepared, model, settings, plan, batches, folder, watch, block_names,
               block_buffers, head, network_class, result)


def intended(run: Run) -> set[str]:
    """The original parameters the strategy trains, from the blocks and the head alone."""
    strategy = run.plan.strategy
    if strategy.name in ("full", "lp-ft", "gradual-unfreeze"):
        trained = set().union(*run.blocks, run.head)
    elif strategy.name == "freeze":
        trained = set().union(*run.blocks[strategy.frozen_blocks:], run.head)
    else:
        return set(run.head)  # linear-probe; adapters train new parameters besides the head
    # Text backbones keep their embeddings block as pretrained unless told otherwise.
    return trained - run.blocks[0] if run.plan.freeze_embeddings else trained


# ----------------------------------------------------------------------------------------------
# the tiny BERT: every strategy


TEXT_STRATEGIES = [
    "full", "linear-probe", "lp-ft", "gradual-unfreeze", "freeze:1", "freeze:3", "lora", "dora",
    "loha",
]
TEXT_EPOCHS = ["train.epochs=3", "train.probe_epochs=4"]


@pytest.fixture(scope="module")
def text_yaml(tiny_bert: Path, text_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import TEXT_EXTRA, TEXT_TRAIN, config_dict, write_yaml

    folder = tmp_path_factory.mktemp("strategies-text")
    return write_yaml(folder / "config.yaml", config_dict(
        folder, data_path=text_csv, backbone=f"hf:{tiny_bert}", train_settings=TEXT_TRAIN,
        **TEXT_EXTRA))


@pytest.fixture(scope="module")
def text_runs(
    text_yaml: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Run]:
    """Each strategy trained once, on a fresh model, and shared by the tests that look at it."""
    cache: dict[str, Run] = {}

    def get(strategy: str) -> Run:
        if strategy not in cache:
            folder = tmp_path_factory.mktemp(f"text-{strategy.replace(':', '-')}")
            cache[strategy] = run_strategy(text_yaml, strategy, folder, *TEXT_EPOCHS)
        return cache[strategy]

    return get


def test_bert_blocks_are_the_embeddings_and_the_layers(text_runs: Callable[[str], Run]) -> None:
    run = text_runs("full")
    every = {name for name in run.watch.parameters if name.startswith(NET)}
    assert len(run.blocks) == 3
    for block, prefix in zip(run.blocks, BERT_BLOCKS, strict=True):
        assert block == {name for name in every if name.startswith(NET + prefix)}
        assert block  # no block is empty
    assert set().union(*run.blocks) == every  # the blocks hold every backbone parameter
    assert run.head == {n for n in run.watch.parameters if n.startswith("head.")} != set()


@pytest.mark.parametrize("strategy", TEXT_STRATEGIES)
def test_text_strategy_trains_exactly_its_parameters(
    text_runs: Callable[[str], Run], strategy: str
) -> None:
    run = text_runs(strategy)
    watch = run.watch
    trains = intended(run)
    originals_graded = watch.graded & watch.parameters
    assert originals_graded == trains
    # After the last epoch (live weights, before any merge): exactly those moved; every other
    # parameter and every buffer is bit-identical.
    assert changed(watch.before, watch.epochs[-1]) == trains
    assert len(watch.epochs) == (4 if strategy == "linear-probe" else 3)

    added = set(watch.added)
    if run.plan.strategy.adapter:
        assert added and all(is_adapter(name) for name in added), sorted(added)[:5]
        assert watch.graded - watch.parameters == added  # every adapter parameter trained ...
        assert changed(watch.added_before, watch.epochs[-1]) == added  # ... and moved
    else:
        assert added == set() and watch.graded <= watch.parameters


@pytest.mark.parametrize("strategy", ["full", "gradual-unfreeze"])
def test_text_embeddings_train_when_asked(
    text_yaml: Path, text_runs: Callable[[str], Run], strategy: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """By default a text backbone's embeddings block stays pretrained; with
    `model.freeze_embeddings: false` it trains with the rest."""
    default = text_runs(strategy)
    assert default.plan.freeze_embeddings
    frozen = default.blocks[0]
    assert {name.split(".")[-2] for name in frozen} >= {"word_embeddings", "position_embeddings"}
    assert not changed(default.watch.before, default.watch.epochs[-1]) & frozen
    folder = tmp_path_factory.mktemp("text-embeddings-trained")
    run = run_strategy(text_yaml, strategy, folder, *TEXT_EPOCHS, "model.freeze_embeddings=false")
    assert not run.plan.freeze_embeddings
    assert intended(run) == set().union(*run.blocks, run.head)
    assert changed(run.watch.before, run.watch.epochs[-1]) == intended(run)


@pytest.mark.parametrize("strategy", ["full", "linear-probe", "lp-ft", "freeze:1", "freeze:3"])
def test_the_returned_best_weights_keep_frozen_parameters_bit_identical(
    text_runs: Callable[[str], Run], strategy: str
) -> None:
    """The model returned holds the best epoch's (averaged) weights: still nothing frozen moved."""
    run = text_runs(strategy)
    assert run.settings.ema_decay is not None  # the weight average is on: it must not leak
    assert changed(run.watch.before, run.watch.current()) == intended(run)


def test_gradual_unfreeze_returns_a_subset_that_includes_the_head(
    text_runs: Callable[[str], Run],
) -> None:
    run = text_runs("gradual-unfreeze")
    moved = changed(run.watch.before, run.watch.current())
    assert run.head <= moved <= intended(run)




@pytest.mark.parametrize("strategy", TEXT_STRATEGIES)
def test_fine_tune_returns_a_plain_model(text_runs: Callable[[str], Run], strategy: str) -> None:
    """`fine_tune` promises a plain model back: every weight trainable, no block held frozen."""
    run = text_runs(strategy)
    assert all(p.requires_grad for p in run.model.parameters())
    assert run.model.frozen == []
    run.model.train()
    assert all(module.training for module in run.model.modules())


def test_linear_probe_computes_backbone_features_once(text_runs: Callable[[str], Run]) -> None:
    run = text_runs("linear-probe")
    train_rows, val_rows = len(run.prepared.data.train), len(run.prepared.data.val)
    assert (train_rows, val_rows) == (192, 48)
    assert run.plan.probe is not None and run.plan.probe.epochs == 4
    assert len(run.result.history) == 4  # four epochs of the head ...
    # ... on one pass of the backbone over the training and validation rows (batches of 64),
    # not one per epoch, and never a forward pass of the whole model.
    assert run.watch.backbone_rows == train_rows + val_rows
    assert run.watch.backbone_calls == 3 + 1
    assert run.watch.first_model_forward is None
    assert changed(run.watch.before, run.watch.current()) == run.head


def read_metrics(trial_dir: Path) -> list[dict[str, Any]]:
    import json

    lines = (trial_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["event"] == "epoch"]


def test_lp_ft_probes_then_fine_tunes_from_the_probed_head(text_runs: Callable[[str], Run]) -> None:
    run = text_runs("lp-ft")
    lines = read_metrics(run.trial_dir)
    assert [(line["stage"], line["epoch"]) for line in lines] == [
        ("probe", 1), ("probe", 2), ("probe", 3), ("probe", 4),
        ("train", 1), ("train", 2), ("train", 3),
    ]
    probed = load_file(str(run.trial_dir / "best-probe.safetensors"))
    assert set(probed) == run.head
    before, watch = run.watch.before, run.watch
    assert any(not torch.equal(probed[name], before[name]) for name in run.head)  # it trained
    # The fine-tuning stage starts from the probed head and the untouched backbone ...
    start = watch.first_model_forward
    assert start is not None
    for name in run.head:
        assert torch.equal(start[name], probed[name]), name
    assert changed(before, start) == run.head
    # ... and the model returned differs from the probed one in every backbone block it trains.
    after = watch.current()
    for block in run.blocks[1:] if run.plan.freeze_embeddings else run.blocks:
        assert changed(before, after) & block == block
    # The probe's features: one pass over the 192 + 48 rows; then each of the three epochs of
    # fine-tuning passes the training rows and the validation rows through the backbone.
    assert watch.backbone_rows == (192 + 48) + 3 * (192 + 48)


@pytest.mark.parametrize("strategy", ["lora", "dora", "loha"])
def test_adapters_are_merged_into_a_plain_network(
    text_runs: Callable[[str], Run], text_yaml: Path, strategy: str
) -> None:
    """Merged by fine_tune: the plain BERT class again, the same names, the same outputs as the
    adapted model of the best epoch (rebuilt from its checkpoint), not those of the base model."""
    run = text_runs(strategy)
    network = run.model.backbone.network
    assert type(network) is run.network_class and not has_adapter(run.model)
    assert {name for name, _ in run.model.named_parameters()} == run.watch.parameters
    assert not any(is_adapter(name) for name, _ in run.model.named_modules())
    # Merging changed exactly the weights of the adapted layers (and the head trained).
    linear = ("attention.self.query", "attention.self.key", "attention.self.value",
              "attention.output.dense", "intermediate.dense", "output.dense")
    adapted_layers = {f"{NET}encoder.layer.{i}.{name}.weight" for i in (0, 1) for name in linear}
    assert changed(run.watch.before, run.watch.current()) == adapted_layers | run.head

    _, model, *_ = setup(text_yaml, strategy, *TEXT_EPOCHS)
    assert run.plan.adapter is not None
    add_adapter(model, run.plan.adapter)
    model.load_state_dict(load_file(str(run.trial_dir / "best.safetensors")))
    adapted, _ = collect_logits(model, run.batches.val)
    merged, _ = collect_logits(run.model, run.batches.val)
    assert abs(adapted - merged).max() <= 1e-5
    base, _ = collect_logits(setup(text_yaml, "full")[1], run.batches.val)
    assert abs(adapted - base).max() > 1e-2


def test_freeze_more_blocks_than_the_backbone_has_is_a_config_error(text_yaml: Path) -> None:
    with pytest.raises(TunesmithError) as caught:
        setup(text_yaml, "freeze:4", *TEXT_EPOCHS)
    error = caught.value
    assert (error.field, error.file) == ("model.strategy", str(text_yaml))
    assert "freeze:4" in error.problem and "(3)" in error.problem
    assert error.fix is not None and "0 to 3" in error.fix
    # The check also guards freezing itself, and fails before any parameter is touched.
    _, model, *_ = setup(text_yaml, "freeze:3", *TEXT_EPOCHS)
    with pytest.raises(TunesmithError) as direct:
        freeze_bottom(model, 4)
    assert direct.value.field == "model.strategy"
    assert all(p.requires_grad for p in model.parameters()) and model.frozen == []


# ----------------------------------------------------------------------------------------------
# gradual unfreezing, epoch by epoch


def test_gradual_unfreeze_adds_one_block_from_the_top_each_epoch(
    text_yaml: Path, tmp_path: Path
) -> None:
    _, model, settings, _, batches = setup(text_yaml, "gradual-unfreeze", "train.epochs=4")
    blocks = [names_of(model, (p for _, p in b.parameters)) for b in model.backbone.blocks()]
    head = names_of(model, model.head.parameters())
    watch = Watch(model)
    unfreeze = GradualUnfreeze(model)
    starts: list[State] = []

    def before_epoch(epoch: int, epochs: int) -> None:
        unfreeze(epoch, epochs)
        starts.append(watch.current())
        watch.start_epoch()

    result = train_trial(model, batches.train, batches.val, settings, tmp_path,
                         reporter=watch, before_epoch=before_epoch)
    watch.close()
    assert len(result.history) == len(starts) == len(watch.epochs) == 4
    embeddings, layer0, layer1 = blocks
    expected = [head, head | layer1, head | layer1 | layer0, head | layer1 | layer0 | embeddings]
    for epoch, trained in enumerate(expected):
        assert watch.graded_by_epoch[epoch] == trained, epoch
        assert changed(starts[epoch], watch.epochs[epoch]) == trained, epoch
    # Epochs follow each other: what an epoch starts from is what the one before ended with.
    for epoch in range(1, 4):
        assert changed(watch.epochs[epoch - 1], starts[epoch]) == set()


# ----------------------------------------------------------------------------------------------
# layer-wise learning-rate decay


def test_layer_decay_gives_the_bottom_blocks_smaller_updates(
    text_yaml: Path, tmp_path: Path
) -> None:
    # One optimizer step on one batch of all 192 rows, no warm-up, no weight decay, no average:
    # Adam's first step moves each weight by lr * g / (|g| + eps), so the largest move within a
    # block is that block's learning rate. (A random head: behind the recipe's zero head the
    # backbone has no gradient at the first step.)
    _, model, settings, plan, batches = setup(
        text_yaml, "full", "train.layer_decay=0.5", "train.epochs=1", "train.warmup=0",
        "train.weight_decay=0", "train.ema=null", "train.batch_size=192",
        "model.freeze_embeddings=false", "model.head.init=xavier_uniform")
    lr, head_lr = settings.lr, settings.head_lr
    assert (settings.layer_decay, lr, head_lr) == (0.5, 2e-3, 5e-3)
    expected = {"embeddings": lr / 4, "encoder.layer.0": lr / 2, "encoder.layer.1": lr,
                "head": head_lr}
    groups = parameter_groups(model, lr=settings.lr, head_lr=settings.head_lr,
                              weight_decay=settings.weight_decay,
                              layer_decay=settings.layer_decay)
    assert {g["block"]: g["lr"] for g in groups} == pytest.approx(expected)

    assert len(batches.train) == 1
    watch = Watch(model)
    fine_tune(model, batches, settings, plan, tmp_path, reporter=watch)
    watch.close()
    (after,) = watch.epochs
    by_block = {
        "embeddings": NET + "embeddings.", "encoder.layer.0": NET + "encoder.layer.0.",
        "encoder.layer.1": NET + "encoder.layer.1.", "head": "head.",
    }
    for block, prefix in by_block.items():
        moves = [(after[n] - watch.before[n]).abs().max().item()
                 for n in watch.parameters if n.startswith(prefix)]
        assert max(moves) == pytest.approx(expected[block], rel=2e-3), block


# ----------------------------------------------------------------------------------------------
# merging adapters: the same outputs from a plain network


def perturb_adapters(model: TaskModel, seed: int, scale: float) -> int:
    """Move every adapter weight off its initialization (LoRA's B starts at zero: no effect)."""
    generator = torch.Generator().manual_seed(seed)
    count = 0
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if is_adapter(name):
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.add_(scale * noise.to(parameter.dtype))
                count += 1
    return count


# A LoHa update is a product of two low-rank products: it needs larger factors to show.
NOISE = {"lora": 0.1, "dora": 0.1, "loha": 0.3}


def features(model: TaskModel, batches: EvalBatches) -> Any:
    output, _ = collect_logits(model.backbone, batches)
    return output


def check_merge(model: TaskModel, batches: EvalBatches, method: str) -> None:
    network_class = type(model.backbone.network)
    names = {name for name, _ in model.named_parameters()}
    base = features(model, batches)
    targets = add_adapter(model, AdapterSettings(method=method, r=4, alpha=8, dropout=0.0))
    assert targets and has_adapter(model)
    assert perturb_adapters(model, seed=1, scale=NOISE[method]) >= 2 * len(targets)
    adapted = features(model, batches)
    merge_adapter(model)
    assert type(model.backbone.network) is network_class and not has_adapter(model)
    assert {name for name, _ in model.named_parameters()} == names
    merged = features(model, batches)
    assert abs(merged - adapted).max() <= 1e-5
    assert abs(adapted - base).max() > 1e-2  # a thousand times the tolerance: the adapters act


@pytest.mark.parametrize("method", ["lora", "dora", "loha"])
def test_merging_text_adapters_keeps_the_outputs(text_yaml: Path, method: str) -> None:
    _, model, _, _, batches = setup(text_yaml, "full")
    check_merge(model, batches.val, method)


# ----------------------------------------------------------------------------------------------
# the tiny timm ResNet: batch norm statistics


IMAGE_FROZEN = 4  # the stem (conv1.*, bn1: three blocks, each convolution with its norm) and layer1
IMAGE_STRATEGIES = ["full", f"freeze:{IMAGE_FROZEN}", "lora", "linear-probe"]


@pytest.fixture(scope="module")
def image_yaml(
    tiny_timm_weights: tuple[str, Path], image_folder: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The tiny ResNet as a trained network would be: timm starts the last batch-norm scale of
    each residual block at zero, which cuts every residual branch off from the gradient (their
    LoRA B matrices, zero too, would never move); a pretrained network has no such zeros."""
    from conftest import IMAGE_TRAIN, config_dict, write_yaml

    name, weights = tiny_timm_weights
    folder = tmp_path_factory.mktemp("strategies-image")
    state = load_file(str(weights))
    zero_scales = [k for k, v in state.items() if k.endswith(".weight") and v.ndim == 1
                   and not v.any()]
    assert sorted(zero_scales) == ["layer1.0.bn2.weight", "layer2.0.bn2.weight",
                                   "layer3.0.bn3.weight", "layer4.0.bn2.weight"]
    for key in zero_scales:
        state[key] = torch.ones_like(state[key])
    trained = folder / f"{name}.safetensors"
    save_file(state, str(trained))
    return write_yaml(folder / "config.yaml", config_dict(
        folder, data_path=image_folder, backbone=f"timm:{name}?weights={trained}",
        train_settings=IMAGE_TRAIN))


@pytest.fixture(scope="module")
def image_runs(
    image_yaml: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Run]:
    cache: dict[str, Run] = {}

    def get(strategy: str) -> Run:
        if strategy not in cache:
            folder = tmp_path_factory.mktemp(f"image-{strategy.replace(':', '-')}")
            cache[strategy] = run_strategy(image_yaml, strategy, folder, "train.epochs=2",
                                           "train.probe_epochs=2")
        return cache[strategy]

    return get


def test_resnet_blocks_put_the_stem_and_layer1_at_the_bottom(
    image_runs: Callable[[str], Run],
) -> None:
    run = image_runs("full")
    bottom = set().union(*run.blocks[:IMAGE_FROZEN])
    stem = ("conv1.", "bn1.", "layer1.")
    assert bottom == {n for n in run.watch.parameters if n.startswith(tuple(NET + s for s in stem))}
    bottom_buffers = set().union(*run.block_buffers[:IMAGE_FROZEN])
    assert any(name.endswith("running_mean") for name in bottom_buffers)
    assert any("layer1." in name and name.endswith("running_var") for name in bottom_buffers)
    every_buffer = set(run.watch.original) - run.watch.parameters
    assert set().union(*run.block_buffers) == every_buffer


@pytest.mark.parametrize("strategy", IMAGE_STRATEGIES)
def test_image_strategy_trains_exactly_its_parameters(
    image_runs: Callable[[str], Run], strategy: str
) -> None:
    run = image_runs(strategy)
    watch = run.watch
    trains = intended(run)
    moved = changed(watch.before, watch.epochs[-1])
    assert watch.graded & watch.parameters == trains
    assert moved & watch.parameters == trains
    if run.plan.strategy.adapter:
        added = set(watch.added)
        assert added and all(is_adapter(name) for name in added)
        assert watch.graded - watch.parameters == added
        assert changed(watch.added_before, watch.epochs[-1]) == added
        assert type(run.model.backbone.network) is run.network_class


@pytest.mark.parametrize(
    ("strategy", "frozen"),
    [("full", 0), (f"freeze:{IMAGE_FROZEN}", IMAGE_FROZEN), ("linear-probe", None)],
)
def test_frozen_blocks_keep_their_batch_norm_statistics(
    image_runs: Callable[[str], Run], strategy: str, frozen: int | None
) -> None:
    run = image_runs(strategy)
    frozen = len(run.blocks) if frozen is None else frozen
    buffers = set(run.watch.original) - run.watch.parameters
    updated = set().union(*run.block_buffers[frozen:])
    # After the last epoch (live) and in the model returned (the best epoch's average): the
    # statistics of the frozen blocks bit-identical, every other block's updated by training.
    for state in (run.watch.epochs[-1], run.watch.current()):
        assert changed(run.watch.before, state) & buffers == updated


def test_merging_an_image_adapter_keeps_the_outputs(image_yaml: Path) -> None:
    _, model, _, _, batches = setup(image_yaml, "full")
    check_merge(model, batches.val, "lora")



@pytest.mark.parametrize("strategy", ["full", "linear-probe", "lp-ft", "freeze:1"])
def test_lr_find_sweeps_the_weights_the_strategy_trains(text_yaml: Path, strategy: str) -> None:
    """`tunesmith lr-find` swept every weight whatever the strategy: a freeze:K, probe or
    adapter run got full fine-tuning's curve."""
    from tunesmith.train.lr_find import lr_range_test
    from tunesmith.train.stages import swept_stage

    _, model, settings, plan, batches = setup(text_yaml, strategy, *TEXT_EPOCHS)
    blocks = [names_of(model, (p for _, p in b.parameters)) for b in model.backbone.blocks()]
    head = names_of(model, model.head.parameters())
    before = snapshot(tensors(model))
    swept = swept_stage(model, settings, plan)
    lr_range_test(model, batches.train, swept, steps=5)
    moved = changed(before, snapshot(tensors(model)))
    if strategy == "linear-probe":
        assert moved == head
        assert swept == plan.probe
        return
    frozen = plan.strategy.frozen_blocks if strategy == "freeze:1" else 0
    expected = set().union(*blocks[frozen:], head)
    if plan.freeze_embeddings:
        expected -= blocks[0]
    assert moved == expected
    assert (swept.head_lr == swept.lr) == (strategy == "lp-ft")


def _running_stats(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(path)).items()
            if k.endswith(("running_mean", "running_var"))}


def test_fixed_and_adapted_backbones_keep_their_batch_norm_statistics(
    tmp_path: Path, image_folder: Path, tiny_timm_weights: tuple[str, Path]
) -> None:
    """A stem kept "as pretrained" (freeze_embeddings) and a backbone under LoRA kept their
    weights but trained their batch norms' running statistics: the adapter saved alone, put
    back on the base model, did not give the model trained."""
    import timm

    from conftest import IMAGE_TRAIN, config_dict, write_yaml

    torch.manual_seed(0)  # a stem that is one block: conv, batch norm, activation
    regnet = tmp_path / "regnetx_002.safetensors"
    save_file({k: v.contiguous() for k, v in
               timm.create_model("regnetx_002", pretrained=False).state_dict().items()},
              str(regnet))
    runs = {
        "fixed": (f"timm:regnetx_002?weights={regnet}",
                  {"strategy": "full", "freeze_embeddings": True}, "stem."),
        "lora": (f"timm:{tiny_timm_weights[0]}?weights={tiny_timm_weights[1]}",
                 {"strategy": "lora"}, ""),
    }
    for name, (backbone, model, prefix) in runs.items():
        raw = config_dict(tmp_path, data_path=image_folder, backbone=backbone, name=name,
                          train_settings={**IMAGE_TRAIN, "epochs": 2},
                          model=model, data={"image_size": 32})
        summary = api.fit(write_yaml(tmp_path / f"{name}.yaml", raw))
        pretrained = _running_stats(regnet if name == "fixed" else tiny_timm_weights[1])
        trained = _running_stats(summary.run_dir / "best" / "timm.safetensors")
        kept = {k: v for k, v in pretrained.items() if k.startswith(prefix)}
        assert kept and all(torch.equal(trained[k], v) for k, v in kept.items()), name
    # the rest of the fixed run's network trained its statistics as before
    moved = [k for k, v in _running_stats(regnet).items()
             if not torch.equal(_running_stats(tmp_path / "runs" / "fixed" / "best" /
                                               "timm.safetensors")[k], v)]
    assert moved and not any(k.startswith("stem.") for k in moved)
