"""The export stage: the model bundle round trip, its integrity checks, and the predictor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tunesmith.errors import TunesmithError
from tunesmith.evaluate import collect_logits
from tunesmith.export import load_bundle, load_predictor, save_bundle
from tunesmith.export.bundle import MANIFEST, WEIGHTS
from tunesmith.models import TaskModel, build_backbone, make_head
from tunesmith.models.inputs import eval_batches

HEAD = {"layers": 1, "hidden": 8, "activation": "tanh", "init": "xavier_normal", "dropout": 0.2}
TEXTS = ["the movie was great", "awful", "a boring plot and a clumsy script", "superb cast"]


def classifier(spec: str, modality: str, classes: int) -> TaskModel:
    torch.manual_seed(0)
    backbone = build_backbone(spec, modality=modality, resolve=Path)  # type: ignore[arg-type]
    return TaskModel(backbone, make_head(backbone.num_features, classes, **HEAD)).eval()


def head_of(classes: int) -> dict[str, object]:
    """The head as a bundle records it: its shape and how many outputs it has."""
    return {**HEAD, "num_outputs": classes}


@pytest.fixture(scope="module")
def text_bundle(
    tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TaskModel, Path]:
    model = classifier(f"hf:{tiny_bert}", "text", 3)
    folder = tmp_path_factory.mktemp("bundle") / "best"
    save_bundle(model, folder, task="text-classification", classes=["a", "b", "c"],
                head=head_of(3), inputs={"text_column": "text"})
    return model, folder


def logits_of(model: TaskModel, inputs: list[str]) -> np.ndarray:
    logits, _ = collect_logits(model, eval_batches(model.backbone, inputs, batch_size=3))
    return logits


def test_text_bundle_gives_identical_logits(text_bundle: tuple[TaskModel, Path]) -> None:
    model, folder = text_bundle
    loaded, manifest = load_bundle(folder)
    before, after = logits_of(model, TEXTS), logits_of(loaded, TEXTS)
    assert before.shape == (4, 3)
    assert np.ptp(before, axis=0).min() > 1e-4  # the inputs really get different outputs
    np.testing.assert_array_equal(before, after)
    assert manifest["classes"] == ["a", "b", "c"]
    assert manifest["head"] == head_of(3)
    assert manifest["preprocessing"]["max_length"] == 64
    # The bundle holds no second copy of the weights: the backbone folder is config + tokenizer.
    assert not list((folder / "backbone").glob("*.safetensors"))


def test_image_bundle_gives_identical_logits(
    tiny_timm_weights: tuple[str, Path], image_folder: Path, tmp_path: Path
) -> None:
    name, weights = tiny_timm_weights
    model = classifier(f"timm:{name}?weights={weights}", "image", 2)
    model.backbone.image_size = 48  # type: ignore[assignment]
    save_bundle(model, tmp_path / "best", task="image-classification",
                classes=["horizontal", "vertical"], head=head_of(2), inputs={})
    loaded, manifest = load_bundle(tmp_path / "best")
    images = sorted(str(p) for p in image_folder.rglob("*.png"))[::20]
    np.testing.assert_array_equal(logits_of(model, images), logits_of(loaded, images))
    assert manifest["backbone"] == {"source": "timm", "name": name, "image_size": 48}


def test_saving_again_replaces_the_bundle(text_bundle: tuple[TaskModel, Path],
                                          tmp_path: Path) -> None:
    model, _ = text_bundle
    folder = tmp_path / "best"
    for classes in (["x", "y", "z"], ["p", "q", "r"]):
        save_bundle(model, folder, task="text-classification", classes=classes,
                    head=head_of(3), inputs={"text_column": "text"})
    assert json.loads((folder / MANIFEST).read_text())["classes"] == ["p", "q", "r"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no staging folders left


def copy_bundle(folder: Path, into: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, into / "best"))


def test_altered_weights_are_refused(text_bundle: tuple[TaskModel, Path], tmp_path: Path) -> None:
    folder = copy_bundle(text_bundle[1], tmp_path)
    weights = folder / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(TunesmithError) as caught:
        load_bundle(folder)
    assert "does not match the checksum" in caught.value.message
    assert caught.value.file == str(weights) and caught.value.field == "weights_sha256"


def test_a_newer_format_is_refused(text_bundle: tuple[TaskModel, Path], tmp_path: Path) -> None:
    folder = copy_bundle(text_bundle[1], tmp_path)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["format_version"] += 1
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(TunesmithError, match="is newer than this tunesmith reads"):
        load_bundle(folder)


@pytest.mark.parametrize(("damage", "message", "field"), [
    (lambda text, manifest: text[: len(text) // 2], "is not valid JSON", None),
    (lambda text, manifest: json.dumps({**manifest, "format_version": "2.1"}),
     "no whole-number format_version (found '2.1')", "format_version"),
    (lambda text, manifest: json.dumps([manifest]), "no whole-number format_version",
     "format_version"),
    (lambda text, manifest: json.dumps({k: v for k, v in manifest.items()
                                        if k != "weights_sha256"}),
     "lacks weights_sha256", "weights_sha256"),
    (lambda text, manifest: json.dumps({k: v for k, v in manifest.items() if k != "classes"}),
     "lacks classes", "classes"),
    # An edited architecture: the weights pass their checksum, the model built does not fit.
    (lambda text, manifest: json.dumps({**manifest, "head": {
        **manifest["head"], "layers": manifest["head"]["layers"] + 1}}),
     "the model tunesmith.json describes does not fit the bundle's weights",
     "backbone, head, ensemble"),
    (lambda text, manifest: json.dumps({**manifest, "ensemble": {"members": 2, "kind": "mean"}}),
     "the model tunesmith.json describes does not fit the bundle's weights",
     "backbone, head, ensemble"),
    # read by prediction, not by the model: a traceback once prediction began
    (lambda text, manifest: json.dumps({**manifest, "inputs": {**manifest["inputs"],
                                                               "delimiter": 5}}),
     "tunesmith.json's inputs does not fit the model", "inputs"),
])
def test_a_damaged_manifest_is_a_clear_error_naming_the_file(
    text_bundle: tuple[TaskModel, Path], tmp_path: Path, run_cli: Any,
    damage: Any, message: str, field: str | None,
) -> None:
    folder = copy_bundle(text_bundle[1], tmp_path)
    text = (folder / MANIFEST).read_text()
    (folder / MANIFEST).write_text(damage(text, json.loads(text)))
    with pytest.raises(TunesmithError) as caught:
        load_bundle(folder)
    assert message in caught.value.message
    assert caught.value.file == str(folder / MANIFEST) and caught.value.field == field
    inputs = tmp_path / "texts.csv"
    inputs.write_text("text\na fine film\n")
    result = run_cli(["predict", folder, inputs])
    assert result.code == 2 and message in result.err and "Traceback" not in result.err


def test_the_saved_tokenizer_truncates_where_the_model_was_fine_tuned(
    text_bundle: tuple[TaskModel, Path],
) -> None:
    """Plain transformers with truncation=True cut at the tokenizer's model_max_length (512),
    so long texts were read further than tunesmith reads them."""
    from transformers import AutoTokenizer

    model, folder = text_bundle
    length = json.loads((folder / MANIFEST).read_text())["preprocessing"]["max_length"]
    assert length == model.backbone.max_length  # type: ignore[attr-defined]
    tokenizer = AutoTokenizer.from_pretrained(folder / "hf")
    assert tokenizer.model_max_length == length
    long_text = " ".join(["fine"] * (3 * length))
    assert len(tokenizer(long_text, truncation=True)["input_ids"]) == length


def test_a_folder_without_a_bundle_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TunesmithError, match="no model bundle here"):
        load_predictor(tmp_path)
    with pytest.raises(TunesmithError, match=r"tunesmith\.json is missing"):
        load_bundle(tmp_path)


def test_a_bundle_without_weights_is_refused(text_bundle: tuple[TaskModel, Path],
                                             tmp_path: Path) -> None:
    folder = copy_bundle(text_bundle[1], tmp_path)
    (folder / WEIGHTS).unlink()
    with pytest.raises(TunesmithError, match="the bundle has no weights file"):
        load_bundle(folder)


def test_predictor_probabilities_and_labels(text_bundle: tuple[TaskModel, Path]) -> None:
    model, folder = text_bundle
    predictor = load_predictor(folder.parent)  # a run folder holding best/ works too
    probabilities = predictor.predict_proba(TEXTS)
    assert probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    expected = torch.softmax(torch.from_numpy(logits_of(model, TEXTS)), dim=1).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    assert predictor.predict(TEXTS) == [["a", "b", "c"][i] for i in expected.argmax(axis=1)]
    assert predictor.predict_proba([]).shape == (0, 3)
