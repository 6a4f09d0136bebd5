"""The config: strict validation, overrides, paths relative to the config, full resolution."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tunesmith import api
from tunesmith.config import load_config, parse_overrides
from tunesmith.errors import TunesmithError
from tunesmith.search import DataProfile, image_size


def autos(value: Any, where: str = "") -> list[str]:
    """The dotted names of every value still set to `auto`."""
    if isinstance(value, dict):
        return [name for key, item in value.items() for name in autos(item, f"{where}{key}.")]
    return [where.rstrip(".")] if value == "auto" else []


def test_every_problem_is_listed_at_once(text_config: Callable[..., Path]) -> None:
    path = text_config(data={"bogus_key": 1}, train={"epochs": "many"})
    with pytest.raises(TunesmithError) as caught:
        load_config(path)
    message = caught.value.message
    assert "2 problem(s)" in message
    assert "data.bogus_key: unknown key" in message
    assert "train.epochs" in message and "'many'" in message
    assert caught.value.file == str(path)


def test_a_union_field_is_reported_once(text_config: Callable[..., Path]) -> None:
    # `lr: float | "auto"` fails in both branches; the user should read one line, not two.
    with pytest.raises(TunesmithError) as caught:
        load_config(text_config(train={"lr": "fast"}))
    assert "1 problem(s)" in caught.value.message
    assert caught.value.message.count("train.lr") == 1


def test_missing_required_keys_are_named(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("name: x\n")
    with pytest.raises(TunesmithError) as caught:
        load_config(path)
    assert "data: required but missing" in caught.value.message
    assert "model: required but missing" in caught.value.message


def test_overrides_are_nested_and_typed_as_yaml(text_config: Callable[..., Path]) -> None:
    config = load_config(text_config(), [
        "train.lr=1e-4", "train.epochs=3", "model.head.layers=2", "data.split.seed=7",
        "model.head.activation=silu",
    ])
    assert isinstance(config.train.lr, float) and config.train.lr == pytest.approx(1e-4)
    assert config.train.epochs == 3 and isinstance(config.train.epochs, int)
    assert config.model.head.layers == 2
    assert config.data.split.seed == 7
    assert config.model.head.activation == "silu"
    # Untouched siblings of an overridden key survive the merge.
    assert config.train.batch_size == 16 and config.data.split.val == pytest.approx(0.2)


def test_parse_overrides_builds_a_nested_dict() -> None:
    assert parse_overrides(["a.b.c=1", "a.b.d=x", "a.e=true", "f="]) == {
        "a": {"b": {"c": 1, "d": "x"}, "e": True}, "f": None,
    }


def test_overrides_are_validated_like_the_file(text_config: Callable[..., Path]) -> None:
    with pytest.raises(TunesmithError) as caught:
        load_config(text_config(), ["train.epochz=3", "train.batch_size=big"])
    assert "train.epochz: unknown key" in caught.value.message
    assert "train.batch_size" in caught.value.message


def test_an_override_without_equals_sign_is_refused(text_config: Callable[..., Path]) -> None:
    with pytest.raises(TunesmithError, match=r"cannot read override 'train\.lr'"):
        load_config(text_config(), ["train.lr"])


def test_relative_paths_are_read_from_the_config_folder(
    tmp_path: Path, tiny_bert: Path, text_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    shutil.copy(text_csv, project / "data" / "t.csv")
    shutil.copytree(tiny_bert, project / "models" / "bert")
    (project / "config.yaml").write_text(yaml.safe_dump({
        "name": "rel", "data": {"train": "data/t.csv"}, "model": {"backbone": "hf:models/bert"},
    }))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_config("../project/config.yaml")
    assert config.path(config.data.train) == project / "data" / "t.csv"
    prepared = api.prepare(config)
    assert len(prepared.data.train) + len(prepared.data.val) + len(prepared.data.test) == 300
    assert prepared.config.data.train == project / "data" / "t.csv"
    assert prepared.config.model.backbone == f"hf:{project / 'models' / 'bert'}"


def test_relative_weights_path_is_read_from_the_config_folder(
    tmp_path: Path, tiny_timm_weights: tuple[str, Path], image_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, weights = tiny_timm_weights
    shutil.copy(weights, tmp_path / "w.safetensors")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "name": "rel", "data": {"train": str(image_folder)},
        "model": {"backbone": f"timm:{name}?weights=w.safetensors"},
    }))
    monkeypatch.chdir(image_folder)
    prepared = api.prepare(load_config(path))
    assert prepared.config.model.backbone == f"timm:{name}?weights={tmp_path / 'w.safetensors'}"


@pytest.mark.parametrize("modality", ["text", "image"])
def test_resolved_config_has_no_auto_left(
    modality: str, text_config: Callable[..., Path], image_config: Callable[..., Path]
) -> None:
    path = (text_config if modality == "text" else image_config)(train={"precision": "auto"})
    raw = load_config(path).model_dump(mode="json")
    assert len(autos(raw)) > 5  # the starting point really has plenty to resolve
    resolved = api.prepare(load_config(path)).config
    assert autos(resolved.model_dump(mode="json")) == []
    assert "auto" not in resolved.to_yaml()


@pytest.mark.parametrize("modality", ["text", "image"])
def test_resolved_config_round_trips_through_load_config(
    modality: str, text_config: Callable[..., Path], image_config: Callable[..., Path],
    tmp_path: Path,
) -> None:
    write_config = text_config if modality == "text" else image_config
    resolved = api.prepare(load_config(write_config())).config
    written = tmp_path / "elsewhere" / "config.yaml"
    written.parent.mkdir()
    written.write_text(resolved.to_yaml())
    reread = load_config(written)
    assert reread.model_dump() == resolved.model_dump()
    # Paths were made absolute, so the copy reads the same files from another folder.
    assert reread.path(reread.data.train) == resolved.path(resolved.data.train)


def test_recipe_fills_autos_from_data_and_model_and_keeps_given_values(
    text_config: Callable[..., Path], image_config: Callable[..., Path]
) -> None:
    given = load_config(text_config(train={"epochs": "auto", "head_lr": "auto"}))
    text = api.prepare(given).config
    assert text.train.lr == 2e-3 and text.train.batch_size == 16  # given: kept as written
    assert isinstance(text.train.epochs, int) and text.train.epochs > 0
    assert isinstance(text.train.head_lr, float) and text.train.head_lr > 0
    # The 95th percentile of the texts' token lengths, rounded up to a multiple of 8, within the
    # tiny BERT's 64 positions; a length given in the config is kept.
    prepared = api.prepare(given)
    tokenizer = prepared.backbone.tokenizer  # type: ignore[attr-defined]
    lengths = [len(ids) for ids in tokenizer(prepared.data.train.inputs)["input_ids"]]
    assert text.data.max_length == min(64, int(np.ceil(np.percentile(lengths, 95) / 8) * 8))
    assert 8 <= text.data.max_length < 64
    kept = api.prepare(load_config(text_config(data={"max_length": 40}))).config
    assert kept.data.max_length == 40
    assert text.model.head.hidden <= 32 and text.model.strategy == "full"

    image = api.prepare(load_config(image_config())).config
    # 32 px images are upsampled 2x, staying below test_resnet's pretrained 160 px ...
    assert image.data.image_size == 64
    # ... unless the config says otherwise.
    chosen = api.prepare(load_config(image_config(data={"image_size": 48}))).config
    assert chosen.data.image_size == 48


@pytest.mark.parametrize(
    ("side", "expected"),
    [(16, 64), (28, 64), (48, 96), (64, 128), (100, 192), (150, 224), (500, 224)],
)
def test_image_size_doubles_small_images_up_to_pretrained(side: int, expected: int) -> None:
    profile = DataProfile(modality="image", train_rows=100, classes=2, median_image_side=side)
    assert image_size(profile, pretrained_size=224) == expected


@pytest.mark.parametrize(
    ("modality", "rows", "given", "expected"),
    [("image", 30_000, None, 0.1), ("image", 19_999, None, 0.0), ("image", 30_000, 0.0, 0.0),
     ("text", 30_000, None, 0.0), ("image", 100, 0.4, 0.4)],
)
def test_mixup_is_the_recipe_only_for_large_image_sets_unless_given(
    modality: str, rows: int, given: float | None, expected: float
) -> None:
    from tunesmith.config import config_from_dict
    from tunesmith.search import resolve

    data: dict[str, Any] = {"train": "d"}
    if given is not None:
        data["augment"] = {"mixup": given}
    config = config_from_dict({"name": "m", "data": data, "model": {"backbone": "timm:m"}},
                              source="c.yaml", base_dir=Path("."))
    profile = DataProfile(modality=modality, train_rows=rows, classes=10,  # type: ignore[arg-type]
                          median_image_side=32 if modality == "image" else None)
    preprocessing = {"size": 64} if modality == "image" else {"max_length": 64}
    resolved = resolve(config, profile, num_features=32, preprocessing=preprocessing,
                       backbone="timm:m", shape=None)
    assert resolved.data.augment.mixup == expected


@pytest.mark.parametrize(
    ("backbone", "modality", "given", "patience", "precision"),
    [("scratch:mlp", "tabular", {}, 20, "fp32"),
     ("scratch:mlp", "tabular", {"patience": None, "precision": "bf16"}, None, "bf16"),
     ("scratch:mlp", "tabular", {"patience": 5}, 5, "fp32"),
     ("timm:m", "image", {}, None, "auto")],
)
def test_a_network_from_scratch_stops_after_20_stale_evaluations_and_a_table_trains_in_fp32(
    backbone: str, modality: str, given: dict[str, Any], patience: int | None, precision: str
) -> None:
    from tunesmith.config import config_from_dict
    from tunesmith.search import resolve
    from tunesmith.train.precision import default_device, resolve_precision

    config = config_from_dict(
        {"name": "m", "data": {"train": "d"}, "model": {"backbone": backbone}, "train": given},
        source="c.yaml", base_dir=Path("."))
    profile = DataProfile(modality=modality, train_rows=150, classes=3,  # type: ignore[arg-type]
                          median_image_side=32 if modality == "image" else None)
    preprocessing = {"size": 64} if modality == "image" else {}
    resolved = resolve(config, profile, num_features=13, preprocessing=preprocessing,
                       backbone=backbone, shape=None)
    assert resolved.train.patience == patience
    # A pretrained backbone keeps what the hardware probe says; a table's MLP is fp32.
    expected = resolve_precision("auto", default_device()) if precision == "auto" else precision
    assert resolved.train.precision == expected


@pytest.mark.parametrize(("backbone", "lr", "head_lr"), [
    ("scratch:mlp", 5e-3, 5e-3),  # one network: its last layer at the rate given for the rest
    ("scratch:mlp", "auto", 1e-3),
    ("hf:m", 5e-3, 1e-3),  # a new head on a pretrained body: its own, higher rate
])
def test_a_network_from_scratch_trains_its_head_at_the_rate_given(
    backbone: str, lr: Any, head_lr: float
) -> None:
    """A scratch MLP given train.lr: 5e-3 trained its last layer at 1e-3, as did every trial of
    a search that drew the rate."""
    from tunesmith.config import config_from_dict
    from tunesmith.search import resolve

    config = config_from_dict(
        {"name": "m", "data": {"train": "d"}, "model": {"backbone": backbone},
         "train": {"lr": lr}}, source="c.yaml", base_dir=Path("."))
    profile = DataProfile(modality="tabular", train_rows=150, classes=3, in_features=13)
    resolved = resolve(config, profile, num_features=13, preprocessing={}, backbone=backbone,
                       shape=None)
    assert resolved.train.head_lr == head_lr


@pytest.mark.parametrize(("modality", "backbone", "strategy", "adamw", "sgd"), [
    ("text", "hf:m", "full", (1e-4, 1e-3), (3e-2, 0.3)),
    ("text", "hf:m", "lp-ft", (5e-5, 1e-3), (1.5e-2, 0.3)),
    ("image", "timm:m", "full", (1e-3, 1e-3), (3e-2, 3e-2)),
    ("tabular", "scratch:mlp", "full", (1e-3, 1e-3), (3e-2, 3e-2)),
])
def test_sgd_s_rates_default_to_its_own_scale(
    modality: str, backbone: str, strategy: str, adamw: tuple[float, float],
    sgd: tuple[float, float]
) -> None:
    """`train.optimizer: sgd` with the rates at auto trains at SGD's scale of AdamW's rates
    (x300 for text, x30 for images and tables): body, new head and probe stage alike. At AdamW's
    rates SGD barely moved MiniLM."""
    from tunesmith.config import config_from_dict
    from tunesmith.search import resolve

    profile = DataProfile(modality=modality, train_rows=3_000, classes=2,  # type: ignore[arg-type]
                          in_features=13, median_image_side=28)
    rates = {}
    for optimizer in ("auto", "adamw", "sgd"):
        config = config_from_dict(
            {"name": "m", "data": {"train": "d"}, "model": {"backbone": backbone,
                                                             "strategy": strategy},
             "train": {"optimizer": optimizer}}, source="c.yaml", base_dir=Path("."))
        train = resolve(config, profile, num_features=13, preprocessing={}, backbone=backbone,
                        shape=None).train
        rates[optimizer] = (train.optimizer, train.lr, train.head_lr, train.probe_lr)
    head = adamw[1]
    assert rates["auto"] == rates["adamw"] == ("adamw", *map(pytest.approx, (*adamw, head)))
    assert rates["sgd"] == ("sgd", *map(pytest.approx, (*sgd, sgd[1])))


@pytest.mark.parametrize("name", [".", "..", "a/b", "/tmp/elsewhere", "a\\b", " "])
def test_a_run_name_that_is_not_one_folder_name_is_refused(
    text_config: Callable[..., Path], name: str
) -> None:
    """`name: .` made output_dir itself the run folder: the earlier runs in it were moved aside
    as one 'previous run'; an absolute name escaped output_dir."""
    with pytest.raises(TunesmithError) as caught:
        load_config(text_config(), [f"name={name!r}"])
    assert "name: " in caught.value.message and "one plain folder name" in caught.value.message


@pytest.mark.parametrize(("data", "field", "words"), [
    ({"encoding": "utf-9"}, "data.encoding", "unknown text encoding"),
    ({"delimiter": "::"}, "data.delimiter", "one character"),
    ({"delimiter": ""}, "data.delimiter", "one character"),
    ({"feature_columns": ["x", "label"]}, "data", "lists the label column 'label'"),
    ({"text_column": "label"}, "data", "text_column and label_column are both 'label'"),
])
def test_data_settings_that_cannot_work_are_refused(
    text_config: Callable[..., Path], data: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(TunesmithError) as caught:
        load_config(text_config(data=data))
    assert f"  {field}: " in caught.value.message and words in caught.value.message


def test_a_key_written_twice_is_refused_not_dropped(tmp_path: Path) -> None:
    """YAML keeps the last of two equal keys; the first section's settings vanished."""
    path = tmp_path / "twice.yaml"
    path.write_text("name: x\ndata: {train: a.csv, label_column: cat}\nmodel: {backbone: x}\n"
                    "data: {train: a.csv}\n")
    with pytest.raises(TunesmithError) as caught:
        load_config(path)
    assert "found the key 'data' twice" in caught.value.message
    assert caught.value.file == str(path)
    merged = tmp_path / "merged.yaml"  # a YAML merge key may still override what it merges
    merged.write_text("base: &base {train: a.csv, label_column: cat}\nname: x\n"
                      "data: {<<: *base, label_column: kind}\nmodel: {backbone: x}\n")
    with pytest.raises(TunesmithError) as caught:
        load_config(merged)
    assert "base: unknown key" in caught.value.message  # read, merged, then validated


def test_a_config_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(TunesmithError) as caught:
        load_config(path)
    assert "not UTF-8" in caught.value.message and caught.value.file == str(path)


@pytest.mark.parametrize(("overrides", "words"), [
    (["train.lr=[1"], "cannot read the value of override 'train.lr=[1'"),
    (["train=1", "train.lr=1"], "sets a key inside 'train'"),
])
def test_overrides_that_cannot_be_read_are_named(
    text_config: Callable[..., Path], overrides: list[str], words: str
) -> None:
    with pytest.raises(TunesmithError) as caught:
        load_config(text_config(), overrides)
    assert words in caught.value.message


def test_true_is_not_a_number(text_config: Callable[..., Path]) -> None:
    """pydantic reads true as 1: `batch_size: true` trained with batches of 1."""
    with pytest.raises(TunesmithError) as caught:
        load_config(text_config(), ["train.batch_size=true", "train.lr=false"])
    assert "train.batch_size: Value error, true/false is not a value of this key" in (
        caught.value.message)
    assert "train.lr: " in caught.value.message
    flags = load_config(text_config(), ["train.compile=true", "data.augment.flip=false"])
    assert flags.train.compile is True and flags.data.augment.flip is False


def test_a_number_is_not_a_flag(text_config: Callable[..., Path]) -> None:
    """pydantic reads 1/0 as true/false: `freeze_embeddings: 1` passed as true."""
    with pytest.raises(TunesmithError) as caught:
        load_config(text_config(), ["model.freeze_embeddings=1", "train.compile=0",
                                    "model.trust_remote_code='on'"])
    message = caught.value.message
    assert "model.freeze_embeddings: Value error, 1 is not true or false" in message
    assert "train.compile: Value error, 0 is not true or false" in message
    assert "model.trust_remote_code: Value error, 'on' is not true or false" in message
    # a flag's own words stay, and a key that takes numbers still does
    config = load_config(text_config(), ["model.freeze_embeddings=auto", "train.epochs=1"])
    assert config.model.freeze_embeddings == "auto" and config.train.epochs == 1


@pytest.mark.parametrize(("written", "expected"), [
    ("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("1.5h", 5400.0), ("1h30m", 5400.0),
    ("1h 30m", 5400.0), ("2m30s", 150.0),
])
def test_a_budget_is_read_as_seconds(text_config: Callable[..., Path], written: str,
                                     expected: float) -> None:
    config = load_config(text_config(), [f"search.budget='{written}'"])
    assert config.search.budget == expected


@pytest.mark.parametrize("written", ["1h30x", "h", "soon"])
def test_a_budget_that_is_no_duration_is_refused(text_config: Callable[..., Path],
                                                  written: str) -> None:
    with pytest.raises(TunesmithError) as caught:
        load_config(text_config(), [f"search.budget='{written}'"])
    assert "search.budget" in caught.value.message
