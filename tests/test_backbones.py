"""The contract every backbone source of the registry passes.

Each source is built through `build_backbone` exactly as a user config names it, on tiny real
networks saved by the test (a 2-layer BERT and ViT folder, a timm test network, a torchvision
MobileNet checkpoint, a user module, the scratch MLP and CNN). Every one must then:

- map a real batch (made by `eval_batches` from the backbone's own preprocessing) to one finite,
  distinct feature row per example, independent of the rest of the batch;
- cut its network into blocks that hold every parameter exactly once, in the order the forward
  pass first uses them, the layers that read the raw input in the first block;
- name adapter targets that are linear or channel-mixing convolutions outside the first block,
  and that run as modules (an adapter wraps their forward);
- rebuild from `save_architecture`'s JSON into a network that, given the original weights,
  computes the same outputs bit for bit;
- under a head, train every parameter it holds.
"""

from __future__ import annotations

import copy
import json
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from tunesmith.models import Backbone, TaskModel, build_backbone, make_head, rebuild_backbone
from tunesmith.models.blocks import Block, ordered_blocks
from tunesmith.models.inputs import eval_batches
from tunesmith.models.scratch import ScratchShape
from tunesmith.models.torchvision_source import TorchvisionBackbone

IMAGE_SIZE = 32
IN_FEATURES = 7
TEXTS = [
    "the movie was great",
    "awful",
    "the cast and the music felt wonderful and the ending was superb",
    "a boring plot",
]
SHAPE = ScratchShape(
    depth=2, width=16, channels=8, kernel_size=3, groups=1, activation="gelu", norm="batch",
    dropout=0.0, init="kaiming_normal",
)
MODULE_NAME = "backbone_contract_nets"  # unique: sys.modules is shared by the whole session
USER_MODULE = '''
import torch
from torch import nn


class Stage(nn.Module):
    def __init__(self, channels_in, channels_out):
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, 3, stride=2, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(channels_out)

    def forward(self, pixels):
        return torch.relu(self.norm(self.conv(pixels)))


class SmallConvNet(nn.Module):
    mean = (0.5, 0.4, 0.3)
    std = (0.2, 0.25, 0.3)

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stages = nn.Sequential(Stage(8, 16), Stage(16, 24))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, pixels):
        return self.pool(self.stages(torch.relu(self.stem(pixels)))).flatten(1)


def image_net():
    return SmallConvNet()


def tabular_net(in_features):
    return nn.Sequential(nn.Linear(in_features, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh())
'''


@dataclass(frozen=True)
class Expected:
    """What a case's backbone must be, written down from the network's architecture."""

    spec: str  # with {assets}, {bert} and {timm} placeholders
    modality: str
    kind: str  # preprocessing()["kind"]
    num_features: int
    first_block: str
    stem_parameter: str  # the weight that reads the raw input
    last_block: str
    left_out: str | None = None  # the weights file's keys the backbone drops (classifier, pooler)


CASES: dict[str, Expected] = {
    "hf-text": Expected(
        "hf:{bert}", "text", "tokenizer", 32, "embeddings", "embeddings.word_embeddings.weight",
        "encoder.layer.1", "pooler.dense.",
    ),
    "hf-vision": Expected(
        "hf:{assets}/vit", "image", "image", 32, "embeddings",
        "embeddings.patch_embeddings.projection.weight", "layernorm", "pooler.dense.",
    ),
    "timm": Expected(
        "timm:{timm}", "image", "image", 96, "conv1.0+1", "conv1.0.weight", "layer4.0", "fc.",
    ),
    "torchvision": Expected(
        "torchvision:mobilenet_v3_small?weights={assets}/mobilenet_v3_small.pth", "image",
        "image", 1024, "features.0", "features.0.0.weight", "classifier.0", "classifier.3.",
    ),
    "python-image": Expected(
        f"python:{MODULE_NAME}:image_net", "image", "image", 24, "stem", "stem.weight",
        "stages.1",
    ),
    "python-tabular": Expected(
        f"python:{MODULE_NAME}:tabular_net", "tabular", "features", 12, "0", "0.weight", "2",
    ),
    "scratch-mlp": Expected(
        "scratch:mlp", "tabular", "features", 16, "0", "0.linear.weight", "1",
    ),
    "scratch-cnn": Expected(
        "scratch:cnn", "image", "image", 32, "0", "0.conv.weight", "2",
    ),
}
RAW_INPUT = {"text": "input_ids", "image": "pixel_values", "tabular": "features"}


@dataclass(frozen=True)
class Case:
    name: str
    expected: Expected
    backbone: Backbone
    inputs: Any  # texts, image paths or feature rows
    batch: dict[str, torch.Tensor]  # all inputs in one batch, rows in `order`
    order: list[int]
    weights: Path | None  # the file the backbone's weights were loaded from

    @property
    def raw(self) -> torch.Tensor:
        return self.batch[RAW_INPUT[self.expected.modality]]


# ----------------------------------------------------------------------------------------------
# assets and cases


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A ViT folder, a torchvision checkpoint, a user module and a few images."""
    import torchvision
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path_factory.mktemp("backbone-assets")
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=IMAGE_SIZE, patch_size=8,
    )
    ViTModel(config).save_pretrained(folder / "vit")
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(
        folder / "vit"
    )
    # A plain state dict that still holds the ImageNet classifier, as a real checkpoint does.
    mobilenet = torchvision.models.mobilenet_v3_small(weights=None)
    torch.save(mobilenet.state_dict(), folder / "mobilenet_v3_small.pth")
    (folder / f"{MODULE_NAME}.py").write_text(USER_MODULE)
    rng = np.random.default_rng(0)
    for index in range(len(TEXTS)):
        pixels = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels, mode="RGB").save(folder / f"image{index}.png")
    yield folder
    sys.modules.pop(MODULE_NAME, None)


def _inputs(expected: Expected, assets: Path) -> Any:
    if expected.modality == "text":
        return TEXTS
    if expected.modality == "image":
        return [str(assets / f"image{index}.png") for index in range(len(TEXTS))]
    return np.random.default_rng(1).normal(size=(len(TEXTS), IN_FEATURES)).astype(np.float32)


def _one_batch(backbone: Backbone, inputs: Any) -> tuple[dict[str, torch.Tensor], list[int]]:
    batches = eval_batches(backbone, inputs, batch_size=len(inputs))
    [batch] = list(batches.loader)
    return {key: value for key, value in batch.items() if key != "labels"}, batches.order


@pytest.fixture(scope="module", params=list(CASES))
def case(
    request: pytest.FixtureRequest,
    assets: Path,
    tiny_bert: Path,
    tiny_timm_weights: tuple[str, Path],
) -> Case:
    expected = CASES[request.param]
    timm_name, timm_file = tiny_timm_weights
    timm_spec = f"{timm_name}?weights={timm_file}"
    spec = expected.spec.format(assets=assets, bert=tiny_bert, timm=timm_spec)
    torch.manual_seed(0)
    backbone = build_backbone(
        spec,
        modality=expected.modality,  # type: ignore[arg-type]
        resolve=Path,
        image_size=IMAGE_SIZE if expected.modality == "image" else None,
        in_features=IN_FEATURES if expected.modality == "tabular" else None,
        shape=SHAPE,
        search=assets,
    ).eval()
    inputs = _inputs(expected, assets)
    batch, order = _one_batch(backbone, inputs)
    weights = spec.partition("?weights=")[2]
    if spec.startswith("hf:"):
        weights = str(Path(spec.removeprefix("hf:")) / "model.safetensors")
    return Case(
        request.param, expected, backbone, inputs, batch, order, Path(weights) if weights else None
    )


# ----------------------------------------------------------------------------------------------
# helpers


class FirstUse(TorchFunctionMode):
    """Records the parameters in the order a forward pass first hands them to a torch function."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.names = {id(parameter): name for name, parameter in network.named_parameters()}
        self.order: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        for value in tree_flatten((args, kwargs or {}))[0]:
            name = self.names.get(id(value)) if isinstance(value, torch.Tensor) else None
            if name is not None and name not in self.order:
                self.order.append(name)
        return func(*args, **(kwargs or {}))


def first_use(backbone: Backbone, batch: dict[str, torch.Tensor]) -> list[str]:
    tracker = FirstUse(backbone.network)
    with torch.no_grad(), tracker:
        backbone(batch)
    return tracker.order


def block_of(blocks: list[Block]) -> dict[str, int]:
    """Parameter name -> index of the block holding it."""
    return {name: index for index, block in enumerate(blocks) for name, _ in block.parameters}


def raw_readers(backbone: Backbone, batch: dict[str, torch.Tensor], raw: torch.Tensor) -> set[str]:
    """Modules holding parameters of their own that are called with the raw input itself."""
    readers: set[str] = set()

    def reader(name: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: Any, kwargs: Any) -> None:
            for value in tree_flatten((args, kwargs))[0]:
                if (
                    isinstance(value, torch.Tensor)
                    and value.shape == raw.shape
                    and value.dtype == raw.dtype
                    and torch.equal(value, raw)
                ):
                    readers.add(name)

        return hook

    handles = [
        module.register_forward_pre_hook(reader(name), with_kwargs=True)
        for name, module in backbone.network.named_modules()
        if any(True for _ in module.parameters(recurse=False))
    ]
    try:
        with torch.no_grad():
            backbone(batch)
    finally:
        for handle in handles:
            handle.remove()
    return readers


def called_modules(backbone: Backbone, batch: dict[str, torch.Tensor]) -> set[str]:
    """Names of the modules whose forward runs in a forward pass."""
    called: set[str] = set()
    handles = [
        module.register_forward_pre_hook(lambda *_, name=name: called.add(name))
        for name, module in backbone.network.named_modules()
    ]
    try:
        with torch.no_grad():
            backbone(batch)
    finally:
        for handle in handles:
            handle.remove()
    return called


def expected_targets(backbone: Backbone) -> list[str]:
    """Linear and ungrouped Conv2d modules whose parameters all lie past the first block."""
    blocks = backbone.blocks()
    past_first = {id(p) for block in blocks[1:] for _, p in block.parameters}
    return [
        name
        for name, module in backbone.network.named_modules()
        if isinstance(module, nn.Linear | nn.Conv2d)
        and not (isinstance(module, nn.Conv2d) and module.groups != 1)
        and all(id(p) in past_first for p in module.parameters())
    ]


def relative_gap(value: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest difference relative to the reference's largest entry (a random-initialized
    MobileNet's features are of the order 1e-10, so absolute tolerances would say nothing)."""
    return float((value - reference).abs().max() / reference.abs().max())


def forward(backbone: Backbone, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        output: torch.Tensor = backbone(batch)
    return output


# ----------------------------------------------------------------------------------------------
# the contract


def test_forward_gives_one_finite_distinct_row_per_example(case: Case) -> None:
    features = forward(case.backbone, case.batch)
    assert case.backbone.num_features == case.expected.num_features
    assert features.shape == (len(TEXTS), case.expected.num_features)
    assert features.dtype == torch.float32
    assert torch.isfinite(features).all()
    # Different inputs, different rows: every pair apart by more than rounding.
    distances = torch.cdist(features, features)
    apart = distances[~torch.eye(len(TEXTS), dtype=torch.bool)]
    assert apart.min() > 1e-2 * features.norm(dim=1).mean()


def test_a_row_does_not_depend_on_the_rest_of_its_batch(case: Case) -> None:
    together = forward(case.backbone, case.batch)
    for position, row in enumerate(case.order):
        alone_batch, _ = _one_batch(case.backbone, case.inputs[row : row + 1])
        alone = forward(case.backbone, alone_batch)
        assert relative_gap(alone[0], together[position]) < 1e-4, case.inputs[row]


def test_preprocessing_is_derived_from_the_model(case: Case) -> None:
    spec = case.backbone.preprocessing()
    assert spec["kind"] == case.expected.kind
    assert case.backbone.modality == case.expected.modality
    if spec["kind"] == "image":
        assert spec["size"] == IMAGE_SIZE
        assert len(spec["mean"]) == len(spec["std"]) == 3
        assert all(value > 0 for value in spec["std"])
        assert case.raw.shape == (len(TEXTS), 3, IMAGE_SIZE, IMAGE_SIZE)
    elif spec["kind"] == "features":
        assert spec["in_features"] == IN_FEATURES
        assert case.raw.shape == (len(TEXTS), IN_FEATURES)
    else:
        assert spec["max_length"] == 64  # the tiny BERT's max_position_embeddings
        assert case.raw.shape[0] == len(TEXTS)
    if case.name == "python-image":  # the user's module states its own normalization
        assert spec["mean"] == pytest.approx([0.5, 0.4, 0.3])
        assert spec["std"] == pytest.approx([0.2, 0.25, 0.3])


def test_blocks_hold_every_parameter_exactly_once(case: Case) -> None:
    blocks = case.backbone.blocks()
    assert len(blocks) >= 2
    in_blocks = Counter(id(p) for block in blocks for _, p in block.parameters)
    in_network = Counter(id(p) for p in case.backbone.network.parameters())
    assert in_blocks == in_network
    assert max(in_blocks.values()) == 1
    # Named as in the network.
    named = dict(case.backbone.network.named_parameters())
    assert all(named[name] is p for block in blocks for name, p in block.parameters)
    assert all(block.size() > 0 for block in blocks)
    assert len({block.name for block in blocks}) == len(blocks)


def test_blocks_run_from_the_input_to_the_output(case: Case) -> None:
    blocks = case.backbone.blocks()
    assert blocks[0].name == case.expected.first_block
    assert blocks[-1].name == case.expected.last_block
    index = block_of(blocks)
    order = first_use(case.backbone, case.batch)
    assert sorted(order) == sorted(index)  # the forward pass uses every parameter
    positions = [index[name] for name in order]
    assert positions == sorted(positions), list(zip(order, positions, strict=True))
    assert index[case.expected.stem_parameter] == 0
    # The layers that read the raw tokens, pixels or feature rows are all in the first block.
    readers = raw_readers(case.backbone, case.batch, case.raw)
    assert readers
    network = case.backbone.network
    for reader in readers:
        for name, _ in network.get_submodule(reader).named_parameters(prefix=reader):
            assert index[name] == 0, name


def test_adapter_targets_are_adaptable_layers_past_the_first_block(case: Case) -> None:
    targets = case.backbone.adapter_targets()
    assert targets  # every case here has linear layers or plain convolutions past its stem
    assert len(set(targets)) == len(targets)
    modules = dict(case.backbone.network.named_modules())
    for name in targets:
        module = modules[name]
        assert isinstance(module, nn.Linear | nn.Conv2d), name
        if isinstance(module, nn.Conv2d):
            assert module.groups == 1, name
    assert targets == expected_targets(case.backbone)
    first = {id(p) for _, p in case.backbone.blocks()[0].parameters}
    assert not any(id(p) in first for name in targets for p in modules[name].parameters())
    assert not set(targets) & raw_readers(case.backbone, case.batch, case.raw)
    # An adapter wraps a layer's forward: a target whose weight is read directly would be inert.
    assert set(targets) <= called_modules(case.backbone, case.batch)


def test_save_and_rebuild_computes_the_same_outputs(case: Case, tmp_path: Path) -> None:
    backbone = case.backbone
    info = backbone.save_architecture(tmp_path / "backbone")
    stored = json.loads(json.dumps(info))
    assert stored == info
    torch.manual_seed(1)  # another random initialization than the one the weights came from
    rebuilt = rebuild_backbone(tmp_path, stored).eval()
    assert type(rebuilt) is type(backbone)
    assert rebuilt.num_features == backbone.num_features
    assert rebuilt.preprocessing() == backbone.preprocessing()
    assert [block.name for block in rebuilt.blocks()] == [block.name for block in backbone.blocks()]
    assert rebuilt.adapter_targets() == backbone.adapter_targets()
    original = forward(backbone, case.batch)
    assert relative_gap(forward(rebuilt, case.batch), original) > 0.1
    rebuilt.load_state_dict(backbone.state_dict(), strict=True)
    assert torch.equal(forward(rebuilt, case.batch), original)


def test_a_task_model_trains_every_parameter(case: Case) -> None:
    backbone = copy.deepcopy(case.backbone)  # training mode moves batch-norm statistics
    head = make_head(
        backbone.num_features, 3, layers=1, hidden=8, activation="tanh", init="xavier_uniform",
        dropout=0.0,
    )
    model = TaskModel(backbone, head).train()
    groups = model.depth_groups()
    assert [group.name for group in groups] == [*(b.name for b in backbone.blocks()), "head"]
    assert [id(p) for _, p in groups[-1].parameters] == [id(p) for p in head.parameters()]
    assert Counter(id(p) for g in groups for _, p in g.parameters) == Counter(
        id(p) for p in model.parameters()
    )
    torch.manual_seed(0)
    logits = model(case.batch)
    assert logits.shape == (len(TEXTS), 3)
    labels = torch.arange(len(TEXTS)) % 3
    torch.autograd.backward(nn.functional.cross_entropy(logits, labels))
    # Every parameter is in the graph (no unused pooler). A single one may get an exact zero: a
    # timm ResNet starts each residual branch with its last batch-norm scale at zero, so the
    # branch's convolutions get no gradient at initialization; that scale itself does.
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    for group in groups:
        gradient = sum(float(p.grad.abs().sum()) for _, p in group.parameters if p.grad is not None)
        assert gradient > 0, group.name


def test_weights_come_from_the_file(case: Case) -> None:
    if case.weights is None:
        pytest.skip("built without a weights file")
    from tunesmith.models.weights import read_state_dict

    saved = read_state_dict(case.weights, field="test")
    loaded = case.backbone.network.state_dict()
    # Compared by value: transformers renames some keys on loading (ViT's
    # encoder.layer.N.attention.attention.query is layers.N.attention.q_proj once loaded).
    in_file = Counter(_fingerprint(tensor) for tensor in saved.values())
    in_network = Counter(_fingerprint(tensor) for tensor in loaded.values())
    # What the file holds beyond the network is the replaced ImageNet classifier or the unused
    # pooler, nothing else.
    left_out = case.expected.left_out
    dropped = Counter(_fingerprint(saved[f"{left_out}{key}"]) for key in ("weight", "bias"))
    assert in_file - in_network == dropped
    assert in_network - in_file == Counter()


def _fingerprint(tensor: torch.Tensor) -> tuple[Any, ...]:
    return tuple(tensor.shape), str(tensor.dtype), tensor.contiguous().numpy().tobytes()


# ----------------------------------------------------------------------------------------------
# ordered_blocks on torchvision's own architectures


def test_ordered_blocks_of_a_resnet18() -> None:
    import torchvision

    torch.manual_seed(0)
    network = torchvision.models.resnet18(weights=None)
    network.fc = nn.Identity()
    blocks = ordered_blocks(network)
    assert [block.name for block in blocks] == [
        "conv1+bn1", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1",
        "layer4.0", "layer4.1",
    ]
    # The stem's batch norm is one block with the convolution it normalizes (as timm's stem
    # group): freezing the stem freezes both, and they share a layer-wise learning rate.
    assert [name for name, _ in blocks[0].parameters] == ["conv1.weight", "bn1.weight",
                                                          "bn1.bias"]
    assert blocks[0].modules == (network.conv1, network.bn1)
    assert [name for name, _ in blocks[3].parameters][-3:] == [
        "layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight",
        "layer2.0.downsample.1.bias",
    ]
    assert sum(block.size() for block in blocks) == sum(p.numel() for p in network.parameters())


def test_a_lone_norm_joins_the_layer_it_normalizes_as_timm_groups_them() -> None:
    """EfficientNet's stem and head convolutions take their batch norms; ConvNeXt's
    downsampling norm, which comes before its convolution, takes that; a ViT's final norm after
    its stack of layers stays a block of its own (timm's `norm` group)."""
    import timm

    def names(model: str) -> list[str]:
        return [block.name for block in ordered_blocks(timm.create_model(model, num_classes=0))]

    lite0 = names("tf_efficientnet_lite0")
    assert lite0[0] == "conv_stem+bn1" and lite0[-1] == "conv_head+bn2"
    assert len(lite0) == 1 + 16 + 1  # the stem, 16 inverted residual blocks, the head
    convnext = names("convnext_atto")
    assert convnext[:4] == ["stem.0+1", "stages.0.blocks.0", "stages.0.blocks.1",
                            "stages.1.downsample.0+1"]
    vit = names("vit_tiny_patch16_224")
    assert vit[-2:] == ["blocks.11", "norm"]
    # timm's deep stem: a Sequential of convolutions and norms, then the network's own bn1
    assert names("resnet10t")[:4] == ["conv1.0+1", "conv1.3+4", "conv1.6+bn1", "layer1.0"]


def tiny_vit() -> TorchvisionBackbone:
    """A vit_b_16 shrunk to 2 layers of width 32, headless as the torchvision source makes it."""
    import torchvision

    torch.manual_seed(0)
    network = torchvision.models.VisionTransformer(
        image_size=IMAGE_SIZE, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    )
    network.heads.head = nn.Identity()
    return TorchvisionBackbone(network, "vit_b_16", num_features=32, image_size=IMAGE_SIZE).eval()


def test_ordered_blocks_of_a_torchvision_vit() -> None:
    backbone = tiny_vit()
    blocks = backbone.blocks()
    assert [block.name for block in blocks] == [
        "conv_proj", "encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1",
        "encoder.ln",
    ]
    # The class token and the position embedding, held by the modules split around them, join
    # the patch projection: the embedding level, ahead of the encoder layers (as timm groups a
    # ViT's cls_token, pos_embed and patch_embed into its stem).
    assert [name for name, _ in blocks[0].parameters] == [
        "class_token", "conv_proj.weight", "conv_proj.bias", "encoder.pos_embedding"]
    pixels = {"pixel_values": torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)}
    index = block_of(blocks)
    order = first_use(backbone, pixels)
    assert sorted(order) == sorted(index)
    assert index["encoder.pos_embedding"] < index["encoder.layers.encoder_layer_0.ln_1.weight"]
    assert order.index("encoder.pos_embedding") < order.index(
        "encoder.layers.encoder_layer_0.ln_1.weight"
    )


def test_the_torchvision_vit_patch_projection_is_not_an_adapter_target() -> None:
    backbone = tiny_vit()
    pixels = {"pixel_values": torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)}
    assert "conv_proj" in raw_readers(backbone, pixels, pixels["pixel_values"])
    assert "conv_proj" not in backbone.adapter_targets()


def test_the_torchvision_vit_adapter_targets_run_as_modules() -> None:
    backbone = tiny_vit()
    pixels = {"pixel_values": torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)}
    targets = backbone.adapter_targets()
    assert "encoder.layers.encoder_layer_0.mlp.0" in targets
    assert set(targets) <= called_modules(backbone, pixels)
