"""`tunesmith export --format onnx` on real runs: the graph ONNX Runtime runs gives the bundle's
probabilities on every test row, has dynamic batch (and sequence) axes, and its int8 version is
scored; bad exports are refused."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest

from conftest import FinishedRun
from tunesmith import api
from tunesmith.config import load_config
from tunesmith.export.onnx import predict_rows


def held_out(run: FinishedRun | Path) -> tuple[Any, np.ndarray, list[str]]:
    run_dir = run if isinstance(run, Path) else run.run_dir
    data = api.prepare(load_config(run_dir / "config.yaml")).data
    test = data.test
    inputs = test.features if test.features is not None else test.inputs
    return inputs, np.asarray(data.targets(test)), data.classes


@pytest.mark.parametrize("which", ["text", "image"])
def test_the_onnx_graph_predicts_what_the_bundle_predicts_on_every_test_row(
    which: str, text_run: FinishedRun, image_run: FinishedRun, run_cli: Any
) -> None:
    run = {"text": text_run, "image": image_run}[which]
    for stale in ("model.onnx", "model.int8.onnx", "export.json"):
        (run.run_dir / stale).unlink(missing_ok=True)
    result = run_cli(["export", run.run_dir, "--format", "onnx", "--quantize", "int8"])
    assert result.code == 0, result.err
    record = json.loads((run.run_dir / "export.json").read_text())
    inputs, targets, classes = held_out(run)
    assert record["parity_rows"] == min(32, len(targets))
    assert record["parity_max_abs_diff"] <= 1e-4
    # the batch (and, for text, sequence) axes are symbolic in the graph
    graph = onnx.load(str(run.run_dir / "model.onnx")).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in graph.input}
    assert set(dims) == set(record["inputs"])
    for name, shape in dims.items():
        assert shape[0] == "batch"
        if name in ("input_ids", "attention_mask"):
            assert shape[1] == "sequence"
    # on every test row: ONNX Runtime's probabilities are the bundle's, and so are the labels
    predictor = api.load(run.run_dir)
    session = ort.InferenceSession(str(run.run_dir / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    got = predict_rows(session, predictor, inputs, record["inputs"], record["output"])
    expected = predictor.predict_proba(inputs)
    assert got.shape == expected.shape == (len(targets), len(classes))
    assert np.abs(got - expected).max() <= 1e-4
    assert [classes[i] for i in got.argmax(axis=1)] == predictor.predict(inputs)
    # the int8 graph is scored on the test rows against the fp32 one
    int8 = record["int8"]
    assert (run.run_dir / "model.int8.onnx").is_file() and int8["rows"] == len(targets)
    assert int8["fp32"] == pytest.approx(float(np.mean(got.argmax(axis=1) == targets)))
    assert int8["change"] == pytest.approx(int8["int8"] - int8["fp32"])
    assert f"{int8['fp32']:.4f} -> {int8['int8']:.4f}" in result.out


def test_export_refuses_a_folder_without_a_bundle(tmp_path: Path, run_cli: Any) -> None:
    result = run_cli(["export", tmp_path, "--format", "onnx"])
    assert result.code == 2 and "no model bundle here" in result.err


def test_export_refuses_an_unknown_format_or_quantization(
    image_run: FinishedRun, run_cli: Any
) -> None:
    result = run_cli(["export", image_run.run_dir, "--format", "tflite"])
    assert result.code == 2 and "unknown export format 'tflite'" in result.err
    result = run_cli(["export", image_run.run_dir, "--quantize", "int4"])
    assert result.code == 2 and "--quantize int8" in result.err


def test_export_refuses_altered_weights(
    image_run: FinishedRun, tmp_path: Path, run_cli: Any
) -> None:
    import shutil

    copy = tmp_path / "image"
    shutil.copytree(image_run.run_dir, copy)
    (copy / "model.onnx").unlink(missing_ok=True)
    weights = copy / "best" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one bit pattern of the last tensor changed
    weights.write_bytes(bytes(data))
    result = run_cli(["export", copy, "--format", "onnx"])
    assert result.code == 2 and "checksum" in result.err
    assert not (copy / "model.onnx").exists()


def test_the_bundle_holds_the_backbone_in_its_own_librarys_format(
    text_run: FinishedRun, image_run: FinishedRun, tiny_bert: Path
) -> None:
    import timm
    import torch
    import transformers
    from safetensors.torch import load_file

    from tunesmith.export.onnx import batches

    # hf: plain transformers loads the fine-tuned encoder; its mean-pooled output is the
    # bundle's features
    predictor = api.load(text_run.run_dir)
    manifest = json.loads((text_run.run_dir / "best" / "tunesmith.json").read_text())
    assert manifest["native"]["library"] == "transformers"
    folder = text_run.run_dir / "best" / manifest["native"]["folder"]
    encoder, loaded = transformers.AutoModel.from_pretrained(folder, output_loading_info=True)
    encoder.eval()
    transformers.AutoTokenizer.from_pretrained(folder)  # the tokenizer travels with it
    # every weight comes from the folder: the pooler tunesmith leaves out (it pools by mean) is
    # the checkpoint's, where transformers used to initialize it at random
    assert not loaded["missing_keys"] and not loaded["unexpected_keys"], loaded
    pretrained = transformers.AutoModel.from_pretrained(tiny_bert)
    assert torch.equal(encoder.pooler.dense.weight, pretrained.pooler.dense.weight)
    assert torch.equal(encoder.pooler.dense.bias, pretrained.pooler.dense.bias)
    texts, _, _ = held_out(text_run)
    batch = next(batches(predictor, texts[:8], 8))
    with torch.no_grad():
        hidden = encoder(input_ids=batch["input_ids"],
                         attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        expected = predictor.model.backbone(batch)
    assert torch.allclose(pooled, expected, atol=1e-5)
    # timm: the weights load into timm.create_model(name, num_classes=0) as they are
    predictor = api.load(image_run.run_dir)
    manifest = json.loads((image_run.run_dir / "best" / "tunesmith.json").read_text())
    native = manifest["native"]
    assert native["library"] == "timm"
    network = timm.create_model(native["model"], num_classes=0)
    network.load_state_dict(load_file(image_run.run_dir / "best" / native["file"]))
    images, _, _ = held_out(image_run)
    batch = next(batches(predictor, images[:4], 4))
    with torch.no_grad():
        assert torch.allclose(network.eval()(batch["pixel_values"]),
                              predictor.model.backbone(batch), atol=1e-5)


def test_a_regression_graph_is_checked_in_the_targets_units_and_a_failed_one_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """float32 carries about 7 digits: outputs near 3e5 differ by steps of 0.03 however exact
    the graph, so a regression's numbers are compared relative to their size."""
    from sklearn.datasets import load_diabetes

    from conftest import config_dict, finish_run
    from tunesmith.errors import TunesmithError
    from tunesmith.export import onnx as exporter

    table = load_diabetes(as_frame=True).frame.rename(columns={"target": "label"})
    table["label"] *= 1000  # targets from 25,000 to 346,000
    table.to_csv(tmp_path / "diabetes.csv", index=False)
    run = finish_run(tmp_path, config_dict(
        tmp_path, data_path=tmp_path / "diabetes.csv", backbone="scratch:mlp", name="big",
        train_settings={"epochs": 20, "precision": "fp32"}))
    record = api.export(run.run_dir, "onnx")
    predictor = api.load(run.run_dir)
    inputs, _, _ = held_out(run)
    expected = predictor.outputs(inputs)
    assert np.abs(expected).max() > 5e4  # the model predicts in the targets' units
    assert record.parity_allowed == pytest.approx(1e-4 * np.abs(expected[:32]).max(), rel=0.5)
    assert record.parity_max_abs_diff <= record.parity_allowed
    session = ort.InferenceSession(record.path, providers=["CPUExecutionProvider"])
    got = predict_rows(session, predictor, inputs, record.inputs, record.output)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # the ONNX engine predicts the same numbers; bf16, which has no tie to recheck, is refused
    engine = api.load(run.run_dir, engine="onnx")
    np.testing.assert_allclose(engine.predict(inputs), expected.reshape(-1), rtol=1e-5)
    with pytest.raises(TunesmithError, match="a regression model has none"):
        api.load(run.run_dir, engine="onnx", precision="bf16")
    # A graph that fails the check is refused and the one exported before stays in place.
    before = (run.run_dir / "model.onnx").read_bytes()
    monkeypatch.setattr(exporter, "_parity", lambda *args: (0.5, 1e-4, 32))
    with pytest.raises(TunesmithError, match=r"differ from PyTorch's by up to 5\.00e-01"):
        api.export(run.run_dir, "onnx")
    assert (run.run_dir / "model.onnx").read_bytes() == before
    assert not [p for p in run.run_dir.iterdir() if p.name.startswith(".model.onnx")]


# ----------------------------------------------------------------------------------------------
# The ONNX engine: `tunesmith predict --engine onnx`, `tunesmith.load(run, engine="onnx")`


def exported(run: FinishedRun, tmp_path: Path) -> Path:
    """A copy of `run` with a fresh ONNX export (tests that alter it keep to their copy)."""
    import shutil

    copy = tmp_path / run.run_dir.name
    shutil.copytree(run.run_dir, copy)
    api.export(copy, "onnx")
    return copy


@pytest.mark.parametrize("which", ["text", "image"])
def test_predict_with_the_onnx_engine_gives_the_bundles_labels_and_probabilities(
    which: str, text_run: FinishedRun, image_run: FinishedRun, run_cli: Any, tmp_path: Path
) -> None:
    from tunesmith.export.onnx import providers

    run_dir = exported({"text": text_run, "image": image_run}[which], tmp_path)
    inputs, _, classes = held_out(run_dir)
    record = json.loads((run_dir / "export.json").read_text())
    assert record["providers"] == providers()  # the parity check ran on each one
    if which == "text":
        source = tmp_path / "texts.jsonl"
        source.write_text("".join(json.dumps({"text": t}) + "\n" for t in inputs))
    else:
        source = tmp_path / "images"
        source.mkdir()
        for i, path in enumerate(inputs):
            (source / f"{i:04d}{Path(path).suffix}").write_bytes(Path(path).read_bytes())
    tables = {}
    for engine in ("torch", "onnx"):
        out = tmp_path / f"{engine}.csv"
        result = run_cli(["predict", run_dir, source, "--engine", engine, "--out", out])
        assert result.code == 0, result.err
        tables[engine] = pd.read_csv(out)
    torch_table, onnx_table = tables["torch"], tables["onnx"]
    assert len(onnx_table) == len(inputs)
    assert onnx_table["input"].tolist() == torch_table["input"].tolist()
    assert onnx_table["label"].tolist() == torch_table["label"].tolist()
    columns = [f"p_{c}" for c in classes]
    np.testing.assert_allclose(onnx_table[columns], torch_table[columns], atol=1e-4)


def test_bf16_prediction_recomputes_the_rows_near_a_tie_in_fp32(
    text_run: FinishedRun, tmp_path: Path
) -> None:
    from tunesmith.export.onnx import (
        RECHECK_SAFETY,
        bf16_available,
        load_onnx_predictor,
        open_session,
        top_two_gap,
    )

    if not bf16_available():
        pytest.skip("bf16 needs ONNX Runtime's OpenVINO provider and AVX-512 BF16 or AMX")
    run_dir = exported(text_run, tmp_path)
    data = api.prepare(load_config(run_dir / "config.yaml")).data
    record = json.loads((run_dir / "export.json").read_text())
    change = record["bf16"]
    # measured on the validation rows, then training rows: bf16 really ran (float32 would
    # change nothing)
    assert change["rows"] == min(1024, len(data.val) + len(data.train)) > len(data.val)
    assert 0 < change["max_abs_diff"] < 0.05
    assert change["recheck_margin"] == pytest.approx(RECHECK_SAFETY * 2 * change["max_abs_diff"])
    inputs = data.test.inputs
    torch_probabilities = api.load(run_dir).predict_proba(inputs)
    graph = run_dir / "model.onnx"
    exact = predict_rows(open_session(graph, "fp32"), api.load(run_dir), inputs,
                         record["inputs"], record["output"])
    fast = predict_rows(open_session(graph, "bf16"), api.load(run_dir), inputs,
                        record["inputs"], record["output"])
    assert np.abs(fast - exact).max() > 0
    predictor = load_onnx_predictor(run_dir, "bf16")
    # with the export's margin: the labels are float32's on every test row
    got = predictor.predict_proba(inputs)
    assert (got.argmax(1) == torch_probabilities.argmax(1)).all()
    assert predictor.rechecked == int(np.sum(top_two_gap(fast) < change["recheck_margin"]))
    # with a margin that rechecks about half the rows: exactly those rows are float32's, the
    # others bf16's
    predictor.recheck_margin = float(np.median(top_two_gap(fast)))
    got = predictor.predict_proba(inputs)
    close = top_two_gap(fast) < predictor.recheck_margin
    assert 0 < predictor.rechecked == close.sum() < len(inputs)
    np.testing.assert_allclose(got[close], exact[close], atol=1e-5)  # batched apart from the rest
    np.testing.assert_allclose(got[~close], fast[~close], atol=1e-6)
    assert predictor.predict(inputs) == [predictor.classes[i] for i in got.argmax(1)]


def test_the_onnx_engine_refuses_an_altered_or_missing_graph_and_bad_options(
    text_run: FinishedRun, tmp_path: Path, run_cli: Any
) -> None:
    from test_cli import assert_user_error

    run_dir = exported(text_run, tmp_path)
    source = tmp_path / "texts.jsonl"
    source.write_text('{"text": "superb"}\n')
    graph = run_dir / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF
    graph.write_bytes(bytes(data))
    assert_user_error(run_cli(["predict", run_dir, source, "--engine", "onnx"]), graph,
                      "checksum", "tunesmith export")
    graph.unlink()
    assert_user_error(run_cli(["predict", run_dir / "best", source, "--engine", "onnx"]),
                      graph, "no ONNX graph", "--engine torch")
    assert_user_error(run_cli(["predict", run_dir, source, "--engine", "tensorrt"]),
                      "unknown engine 'tensorrt'", "--engine")
    assert_user_error(run_cli(["predict", run_dir, source, "--precision", "bf16"]),
                      "--precision", "--engine onnx")
    assert_user_error(run_cli(["predict", run_dir, source, "--engine", "onnx", "--precision",
                               "int4"]), "unknown precision 'int4'")


def test_a_graph_the_openvino_provider_cannot_run_is_predicted_on_the_cpu_kernels(
    text_run: FinishedRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    from tunesmith.errors import TunesmithError
    from tunesmith.export import onnx as exporter

    if exporter.OPENVINO not in exporter.providers():
        pytest.skip("ONNX Runtime's OpenVINO provider is not installed here")
    real = exporter.open_session

    def refusing(path: Path, precision: str = "fp32", provider: str | None = None) -> Any:
        if (provider or exporter.providers()[0]) == exporter.OPENVINO:
            raise state.Fail("[OpenVINO-EP] an op it does not support")
        return real(path, precision, provider)

    monkeypatch.setattr(exporter, "open_session", refusing)
    run_dir = exported(text_run, tmp_path)
    record = json.loads((run_dir / "export.json").read_text())
    assert record["providers"] == [exporter.CPU] and record["bf16"] is None
    monkeypatch.undo()
    engine = api.load(run_dir, engine="onnx")
    assert engine.provider == exporter.CPU  # the provider the check ran, not OpenVINO
    texts, _, _ = held_out(run_dir)
    assert engine.predict(texts) == api.load(run_dir).predict(texts)
    with pytest.raises(TunesmithError, match="did not run this graph on"):
        api.load(run_dir, engine="onnx", precision="bf16")


def test_prefetched_gives_every_item_in_order_and_raises_what_making_one_raised() -> None:
    from tunesmith.export.onnx import prefetched

    assert list(prefetched(iter(range(50)), 2)) == list(range(50))
    assert list(prefetched([], 2)) == []

    def failing() -> Any:
        yield from range(3)
        raise ValueError("item 3 is broken")

    got: list[int] = []
    with pytest.raises(ValueError, match="item 3 is broken"):
        got.extend(prefetched(failing(), 2))
    assert got == [0, 1, 2]
    assert not [t for t in threading.enumerate() if t.name == "tunesmith-prefetch"]


def test_prefetched_stops_making_items_when_the_consumer_stops() -> None:
    from tunesmith.export.onnx import prefetched

    made: list[int] = []

    def counted() -> Any:
        for i in range(1000):
            made.append(i)
            yield i

    items = prefetched(counted(), 2)
    assert [next(items), next(items)] == [0, 1]
    items.close()  # the consumer stops: the thread ends, having made at most `depth` more
    assert not [t for t in threading.enumerate() if t.name == "tunesmith-prefetch"]
    assert 2 <= len(made) <= 2 + 2 + 1


def test_the_onnx_engine_names_an_unreadable_image_among_the_inputs(
    image_run: FinishedRun, tmp_path: Path
) -> None:
    from tunesmith.errors import TunesmithError

    run_dir = exported(image_run, tmp_path)
    inputs, _, _ = held_out(run_dir)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    engine = api.load(run_dir, engine="onnx")
    # decoded in the prefetching thread, three batches in: raised here, naming the file
    with pytest.raises(TunesmithError, match="cannot read the image") as raised:
        engine.predict_proba([*inputs[:5], broken, *inputs[5:]], batch_size=2)
    assert str(broken) in str(raised.value)
    assert not [t for t in threading.enumerate() if t.name == "tunesmith-prefetch"]
    assert engine.predict_proba(inputs[:5], batch_size=2).shape[0] == 5  # and it goes on


def test_evaluate_scores_the_exported_graph_beside_the_bundles_scores(
    text_run: FinishedRun, tmp_path: Path, run_cli: Any
) -> None:
    from test_cli import assert_user_error
    from tunesmith.export.onnx import bf16_available

    run_dir = exported(text_run, tmp_path)
    precisions = ["fp32", "bf16"] if bf16_available() else ["fp32"]
    for precision in precisions:
        result = run_cli(["evaluate", run_dir, "--engine", "onnx", "--precision", precision])
        assert result.code == 0, result.err
    assert run_cli(["evaluate", run_dir]).code == 0
    found = {p.name: json.loads(p.read_text()) for p in (run_dir / "evaluations").iterdir()}
    names = {"fp32": "test-onnx.json", "bf16": "test-onnx-bf16.json"}
    assert set(found) == {"test.json", *(names[p] for p in precisions)}  # none overwritten
    bundle = found["test.json"]
    assert (bundle["engine"], bundle["precision"]) == ("torch", "fp32")
    _, targets, _ = held_out(run_dir)
    for precision in precisions:
        graph = found[names[precision]]
        assert (graph["engine"], graph["precision"]) == ("onnx", precision)
        assert graph["rows"] == bundle["rows"] == len(targets)
        # the same labels on every row: the same accuracy; the probabilities within bf16's error
        assert graph["scores"]["accuracy"] == bundle["scores"]["accuracy"]
        close = 1e-4 if precision == "fp32" else 1e-2
        assert graph["scores"]["log_loss"]["value"] == pytest.approx(
            bundle["scores"]["log_loss"]["value"], abs=close)
    (run_dir / "model.onnx").unlink()
    assert_user_error(run_cli(["evaluate", run_dir, "--engine", "onnx"]), "no ONNX graph",
                      "tunesmith export")
