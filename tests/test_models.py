"""The model stage: backbone sources, weights loading, and heads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunesmith.errors import TunesmithError
from tunesmith.models import TaskModel, build_backbone, make_head, parse_spec
from tunesmith.models.hf import HFTextBackbone
from tunesmith.models.timm_source import TimmBackbone
from tunesmith.models.weights import read_state_dict


def build(spec: str, modality: str = "text"):  # type: ignore[no-untyped-def]
    return build_backbone(spec, modality=modality, resolve=Path)  # type: ignore[arg-type]


class Checkpoint:
    """Not a state dict: unpickling it means importing and running this module's code."""

    def __init__(self) -> None:
        self.weights = {"w": torch.zeros(2)}


# ----------------------------------------------------------------------------------------------
# hf:


@pytest.fixture(scope="module")
def bert_backbone(tiny_bert: Path) -> HFTextBackbone:
    backbone = build(f"hf:{tiny_bert}")
    assert isinstance(backbone, HFTextBackbone)
    return backbone.eval()


def test_hf_backbone_reads_the_model_and_tokenizer(bert_backbone: HFTextBackbone) -> None:
    assert bert_backbone.num_features == 32
    assert bert_backbone.max_length == 64  # limited by max_position_embeddings, below 256
    [ids] = bert_backbone.tokenize(["the movie was great"])
    vocab = bert_backbone.tokenizer.get_vocab()
    assert ids == [vocab["[CLS]"], vocab["the"], vocab["movie"], vocab["was"], vocab["great"],
                   vocab["[SEP]"]]
    long_text = " ".join(["film"] * 200)
    assert len(bert_backbone.tokenize([long_text])[0]) == 64


def test_hf_mean_pooling_ignores_padding(bert_backbone: HFTextBackbone) -> None:
    from tunesmith.data.text import pad_collate

    short, long = bert_backbone.tokenize(
        ["great movie", "the plot and the cast and the music felt boring"])
    collate = pad_collate(bert_backbone.pad_id)
    with torch.no_grad():
        alone = bert_backbone(collate([(short, 0)]))
        batch = collate([(short, 0), (long, 0)])
        padded = bert_backbone(batch)
    assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]  # really padded
    assert torch.allclose(alone[0], padded[0], atol=1e-5)
    # The mean runs over the real tokens only: recompute it from the encoder's hidden states.
    with torch.no_grad():
        hidden = bert_backbone.network(input_ids=torch.tensor([short])).last_hidden_state[0]
    assert torch.allclose(alone[0], hidden.mean(0), atol=1e-5)
    # ... which differs from the mean over the padded positions too.
    with torch.no_grad():
        full = bert_backbone.network(**{k: batch[k] for k in ("input_ids", "attention_mask")})
    assert not torch.allclose(full.last_hidden_state[0].mean(0), padded[0], atol=1e-3)


def test_hf_missing_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(TunesmithError) as caught:
        build(f"hf:{tmp_path / 'nope'}")
    assert caught.value.file == str(tmp_path / "nope")
    assert caught.value.field == "model.backbone"
    assert "model folder not found" in caught.value.message


def test_hf_folder_without_config_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(TunesmithError, match=r"config\.json is missing"):
        build(f"hf:{tmp_path}")


def test_hf_folder_without_weights_is_a_user_error(tiny_bert: Path, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text((tiny_bert / "config.json").read_text())
    with pytest.raises(TunesmithError, match="cannot load the model weights"):
        build(f"hf:{tmp_path}")


# ----------------------------------------------------------------------------------------------
# timm:


def test_timm_backbone_loads_matching_weights(tiny_timm_weights: tuple[str, Path]) -> None:
    name, weights = tiny_timm_weights
    backbone = build(f"timm:{name}?weights={weights}", "image")
    assert isinstance(backbone, TimmBackbone)
    saved = load_file(str(weights))
    state = backbone.network.state_dict()
    assert set(saved) - set(state) == {"fc.weight", "fc.bias"}  # the replaced classifier only
    for key, tensor in state.items():
        assert torch.equal(tensor, saved[key]), key
    assert backbone.num_features == 96
    # Preprocessing comes from the model's own pretrained data config, not from flags.
    import timm.data

    pretrained = timm.data.resolve_model_data_config(backbone.network)
    preprocessing = backbone.preprocessing()
    assert preprocessing["size"] == pretrained["input_size"][-1] == 160
    assert preprocessing["mean"] == list(pretrained["mean"])
    assert preprocessing["std"] == list(pretrained["std"])
    with torch.no_grad():
        features = backbone.eval()({"pixel_values": torch.randn(2, 3, 64, 64)})
    assert features.shape == (2, 96)


def test_timm_backbone_is_not_its_random_init(tiny_timm_weights: tuple[str, Path]) -> None:
    # Guards the test above: without ?weights= the network starts from another random draw.
    name, weights = tiny_timm_weights
    torch.manual_seed(123)
    fresh = build(f"timm:{name}", "image").network.state_dict()
    saved = load_file(str(weights))
    assert not torch.equal(fresh["conv1.0.weight"], saved["conv1.0.weight"])


def test_weights_of_another_architecture_are_refused(tmp_path: Path,
                                                     tiny_timm_weights: tuple[str, Path]) -> None:
    import timm

    name, _ = tiny_timm_weights
    other = tmp_path / "efficientnet.safetensors"
    save_file(timm.create_model("test_efficientnet", pretrained=False).state_dict(), str(other))
    expected = set(timm.create_model(name, pretrained=False, num_classes=0).state_dict())
    given = set(load_file(str(other)))
    with pytest.raises(TunesmithError) as caught:
        build(f"timm:{name}?weights={other}", "image")
    message = caught.value.message
    assert caught.value.file == str(other)
    assert f"missing keys ({len(expected - given)}): conv1.0.weight" in message
    unexpected = {key for key in given - expected if not key.startswith("fc.")}
    assert f"unexpected keys ({len(unexpected)})" in message
    assert "bn1.weight" in message.split("wrong shapes")[1]  # shared name, other shape


def test_weights_with_wrong_shapes_are_refused(tmp_path: Path,
                                               tiny_timm_weights: tuple[str, Path]) -> None:
    name, weights = tiny_timm_weights
    state = load_file(str(weights))
    state["conv1.0.weight"] = torch.zeros(1, 1, 1, 1)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(TunesmithError, match=r"wrong shapes \(1\): conv1\.0\.weight"):
        build(f"timm:{name}?weights={path}", "image")


def test_a_plain_pth_state_dict_is_read(
    tmp_path: Path, tiny_timm_weights: tuple[str, Path]
) -> None:
    name, weights = tiny_timm_weights
    saved = load_file(str(weights))
    path = tmp_path / "w.pth"
    torch.save({"state_dict": saved}, path)  # the common Lightning-style wrapper
    backbone = build(f"timm:{name}?weights={path}", "image")
    assert torch.equal(backbone.network.state_dict()["conv1.0.weight"], saved["conv1.0.weight"])


@pytest.mark.parametrize("payload", ["module", "custom-object"])
def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path, payload: str) -> None:
    path = tmp_path / "w.pth"
    torch.save(nn.Linear(2, 2) if payload == "module" else Checkpoint(), path)
    # A readable checkpoint, for anyone willing to run its code ...
    assert not isinstance(torch.load(path, weights_only=False), dict)
    # ... which tunesmith is not.
    with pytest.raises(TunesmithError) as caught:
        read_state_dict(path, field="model.backbone")
    assert "not a plain state dict" in caught.value.message
    assert caught.value.file == str(path)


def test_a_pickle_of_non_tensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"epoch": 3, "weights": [1.0, 2.0]}, path)
    with pytest.raises(TunesmithError, match="does not hold a state dict of tensors"):
        read_state_dict(path, field="model.backbone")


def test_a_missing_weights_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(TunesmithError, match="weights file not found"):
        build(f"timm:test_resnet?weights={tmp_path / 'none.safetensors'}", "image")


def test_an_unknown_timm_name_suggests_close_names() -> None:
    with pytest.raises(TunesmithError) as caught:
        build("timm:test_resnett", "image")
    assert "timm has no model named 'test_resnett'" in caught.value.message
    closest = caught.value.message.split("closest: ")[1].split("\n")[0].split(", ")
    assert "test_resnet" in closest


# ----------------------------------------------------------------------------------------------
# the registry


def test_an_unknown_source_names_the_known_ones() -> None:
    with pytest.raises(TunesmithError) as caught:
        parse_spec("foo:bar")
    assert "unknown backbone source 'foo'" in caught.value.message
    for source in ("hf:", "timm:", "torchvision:", "python:", "scratch:"):
        assert source in caught.value.message, source
    assert caught.value.field == "model.backbone"


def test_a_misspelt_source_gets_a_suggestion() -> None:
    with pytest.raises(TunesmithError, match="did you mean 'timm'"):
        parse_spec("tim:resnet18")


def test_spec_options_are_parsed_and_checked() -> None:
    spec = parse_spec("timm:resnet18?weights=models/r18.safetensors")
    assert (spec.source, spec.target, spec.options) == (
        "timm", "resnet18", {"weights": "models/r18.safetensors"})
    with pytest.raises(TunesmithError, match=r"unknown option\(s\) \['size'\]"):
        parse_spec("timm:resnet18?size=3")
    with pytest.raises(TunesmithError, match="the name or path is empty"):
        parse_spec("hf:")


def test_a_backbone_for_the_other_modality_is_refused(tiny_bert: Path) -> None:
    with pytest.raises(TunesmithError) as caught:
        build(f"hf:{tiny_bert}", "image")
    assert "reads text inputs, but the task is image" in caught.value.message
    assert "timm:resnet18" in caught.value.message


# ----------------------------------------------------------------------------------------------
# heads


def test_head_with_hidden_layers_has_the_intended_modules() -> None:
    torch.manual_seed(0)
    head = make_head(32, 3, layers=2, hidden=16, activation="silu", init="orthogonal", dropout=0.3)
    kinds = [type(module) for module in head]
    assert kinds == [nn.Linear, nn.SiLU, nn.Dropout, nn.Linear, nn.SiLU, nn.Dropout, nn.Linear]
    shapes = [(m.in_features, m.out_features) for m in head if isinstance(m, nn.Linear)]
    assert shapes == [(32, 16), (16, 16), (16, 3)]
    assert all(m.p == pytest.approx(0.3) for m in head if isinstance(m, nn.Dropout))
    for linear in (m for m in head if isinstance(m, nn.Linear)):
        weight = linear.weight.detach()
        rows = min(weight.shape)
        gram = weight @ weight.T if weight.shape[0] <= weight.shape[1] else weight.T @ weight
        assert torch.allclose(gram, torch.eye(rows), atol=1e-5)  # orthogonal
        assert torch.count_nonzero(linear.bias) == 0


def test_zeros_init_zeroes_the_output_layer_only() -> None:
    torch.manual_seed(0)
    head = make_head(64, 4, layers=1, hidden=128, activation="relu", init="zeros", dropout=0.0)
    hidden, output = head[0], head[-1]
    assert torch.count_nonzero(output.weight) == 0 and torch.count_nonzero(output.bias) == 0
    # The hidden layer keeps a He start, std sqrt(2 / fan_in) = 0.177, so gradients reach it.
    assert hidden.weight.std().item() == pytest.approx((2 / 64) ** 0.5, rel=0.1)
    assert isinstance(head[1], nn.ReLU)
    logits = head(torch.randn(5, 64))
    assert torch.equal(logits, torch.zeros(5, 4))


def test_linear_head_with_dropout() -> None:
    head = make_head(8, 2, layers=0, hidden=99, activation="gelu", init="xavier_uniform",
                     dropout=0.2)
    assert [type(m) for m in head] == [nn.Dropout, nn.Linear]
    assert (head[1].in_features, head[1].out_features) == (8, 2)
    bound = (6 / (8 + 2)) ** 0.5
    assert head[1].weight.abs().max() <= bound
    no_dropout = make_head(8, 2, layers=0, hidden=99, activation="gelu", init="default",
                           dropout=0.0)
    assert [type(m) for m in no_dropout] == [nn.Linear]


@pytest.mark.parametrize(("name", "kind"), [("gelu", nn.GELU), ("tanh", nn.Tanh),
                                           ("leaky_relu", nn.LeakyReLU), ("sigmoid", nn.Sigmoid)])
def test_head_activations(name: str, kind: type[nn.Module]) -> None:
    head = make_head(4, 2, layers=1, hidden=3, activation=name, init="default", dropout=0.0)
    assert isinstance(head[1], kind)


def test_classifier_is_backbone_then_head(bert_backbone: HFTextBackbone) -> None:
    from tunesmith.data.text import pad_collate

    torch.manual_seed(0)
    head = make_head(32, 2, layers=0, hidden=32, activation="gelu", init="xavier_uniform",
                     dropout=0.0)
    model = TaskModel(bert_backbone, head).eval()
    batch = pad_collate(bert_backbone.pad_id)([(ids, 0) for ids in
                                               bert_backbone.tokenize(["great", "awful film"])])
    with torch.no_grad():
        assert torch.allclose(model(batch), head(bert_backbone(batch)))
