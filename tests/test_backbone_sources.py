"""Backbone sources on the networks and user code that broke them.

torchvision's GoogLeNet and Inception v3 load the state dict their pretrained weights are (no
auxiliary classifiers), compute what torchvision's pretrained model computes, and train. A
`python:` builder that tunesmith cannot call, that raises, or whose module does not compile is
one message naming the file, `model.backbone` and the fix, with exit status 2.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import IMAGE_TRAIN, CliResult, config_dict, logged, write_yaml
from test_cli import assert_user_error
from tunesmith.models import build_backbone

Cli = Callable[[Sequence[str | Path]], CliResult]

# The smallest input each network takes: GoogLeNet pools 32 px down to 1x1, Inception v3's
# stem needs 75 px.
MIN_SIZE = {"googlenet": 32, "inception_v3": 75}


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich folds lines at 80 columns; a wide console keeps each message on one line."""
    monkeypatch.setenv("COLUMNS", "2000")


# ----------------------------------------------------------------------------------------------
# torchvision: networks built with auxiliary classifiers by default


def _pretrained_layout(name: str) -> nn.Module:
    """The network torchvision's pretrained weights load into: no auxiliary classifiers, and
    `transform_input` on (the weights were ported from TensorFlow and expect pixels in [-1, 1],
    which the first layer derives from the ImageNet-normalized input)."""
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.get_model(
        name, weights=None, aux_logits=False, transform_input=True, init_weights=True
    )


def _save_state_dict(network: nn.Module, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize("name", list(MIN_SIZE))
def test_a_pretrained_state_dict_loads_computes_as_torchvision_and_trains(
    name: str, tmp_path: Path
) -> None:
    reference = _pretrained_layout(name).eval()
    weights = _save_state_dict(reference, tmp_path / f"{name}.safetensors")
    size = MIN_SIZE[name]

    backbone = build_backbone(
        f"torchvision:{name}?weights={weights}", modality="image", resolve=Path, image_size=size
    )

    loaded = backbone.network.state_dict()
    saved = reference.state_dict()
    assert set(saved) - set(loaded) == {"fc.weight", "fc.bias"}  # the replaced classifier
    assert set(loaded) <= set(saved)
    for key, tensor in loaded.items():
        assert torch.equal(tensor, saved[key]), key

    # The same features as torchvision's own pretrained model, up to its classifier. In float64:
    # the random network's activations grow large, and the backbone's channels-last convolutions
    # round differently in float32.
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    reference.fc = nn.Identity()
    with torch.no_grad():
        expected = reference.double()(pixels.double())
        features = copy.deepcopy(backbone).double().eval()({"pixel_values": pixels.double()})
    assert features.shape == (2, backbone.num_features) == (2, expected.shape[1])
    torch.testing.assert_close(features, expected, rtol=1e-9, atol=1e-9)

    # Training mode: one feature row per example (not a tuple with auxiliary logits), and a
    # gradient for every parameter.
    backbone.train()
    features = backbone({"pixel_values": pixels})
    assert features.shape == (2, backbone.num_features)
    (features * torch.linspace(-1.0, 1.0, features.shape[1])).sum().backward()
    for parameter_name, parameter in backbone.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name


def test_a_googlenet_run_trains_from_its_pretrained_state_dict(
    tmp_path: Path, image_folder: Path, run_cli: Cli
) -> None:
    weights = _save_state_dict(_pretrained_layout("googlenet"), tmp_path / "googlenet.safetensors")
    raw = config_dict(
        tmp_path, data_path=image_folder, backbone=f"torchvision:googlenet?weights={weights}",
        train_settings={**IMAGE_TRAIN, "epochs": 4, "workers": 0},
        name="googlenet", data={"image_size": 32},
    )
    result = run_cli(["run", write_yaml(tmp_path / "googlenet.yaml", raw)])

    assert result.code == 0, result.err[-3000:]
    losses = [epoch["train_loss"] for epoch in logged(tmp_path / "runs" / "googlenet" / "trials/0")]
    # Seed 0 gives 0.75, 0.62, 0.42, 0.35: the network learns the stripes.
    assert len(losses) == 4
    assert losses[-1] < 0.6 * losses[0]


# ----------------------------------------------------------------------------------------------
# python: user code that fails


@pytest.fixture(autouse=True)
def forget_user_modules() -> Iterator[None]:
    """Each test's module has its own name (sys.modules is shared by the session); drop the
    ones that imported."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.endswith("_net"):
            del sys.modules[name]


def _user_config(tmp_path: Path, image_folder: Path, module: str, source: str) -> Path:
    """A config whose backbone is `python:MODULE:build`, with MODULE.py (`source`) beside it."""
    (tmp_path / f"{module}.py").write_text(source)
    raw = config_dict(tmp_path, data_path=image_folder, backbone=f"python:{module}:build",
                      train_settings={"epochs": 1, "batch_size": 16, "precision": "fp32"})
    return write_yaml(tmp_path / "config.yaml", raw)


NET = '''
from torch import nn


def net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
'''


def test_a_builder_that_needs_arguments(
    tmp_path: Path, image_folder: Path, run_cli: Cli
) -> None:
    source = NET + "\n\ndef build(depth, width=8):\n    return net()\n"
    config = _user_config(tmp_path, image_folder, "needs_depth_net", source)

    assert_user_error(
        run_cli(["validate", config]), f"{tmp_path / 'needs_depth_net.py'}: model.backbone: ",
        "python:needs_depth_net:build takes an argument tunesmith does not pass: depth",
        "give depth a default",
    )


def test_a_builder_that_raises(tmp_path: Path, image_folder: Path, run_cli: Cli) -> None:
    source = NET + '\n\ndef build():\n    raise RuntimeError("no GPU here\\nsecond line")\n'
    config = _user_config(tmp_path, image_folder, "raising_net", source)

    result = run_cli(["validate", config])

    assert_user_error(
        result, f"{tmp_path / 'raising_net.py'}: model.backbone: ",
        "python:raising_net:build raised RuntimeError: no GPU here",
        "fix the error in build",
    )
    assert "second line" not in result.err


def test_a_module_with_a_syntax_error(tmp_path: Path, image_folder: Path, run_cli: Cli) -> None:
    source = NET + "\n\ndef build(:\n    return net()\n"
    config = _user_config(tmp_path, image_folder, "broken_syntax_net", source)

    assert_user_error(
        run_cli(["validate", config]), f"{tmp_path / 'broken_syntax_net.py'}: model.backbone: ",
        "cannot import module 'broken_syntax_net': SyntaxError at line 9: invalid syntax",
        f"python -m py_compile {tmp_path / 'broken_syntax_net.py'}",
    )


def test_a_module_whose_top_level_code_raises(
    tmp_path: Path, image_folder: Path, run_cli: Cli
) -> None:
    source = NET + '\n\nWIDTH = int("eight")\n\n\ndef build():\n    return net()\n'
    config = _user_config(tmp_path, image_folder, "top_level_raising_net", source)

    assert_user_error(
        run_cli(["validate", config]), f"{tmp_path / 'top_level_raising_net.py'}: model.backbone: ",
        "cannot import module 'top_level_raising_net': it raised ValueError: invalid literal",
        "fix the error in the module's top-level code",
    )


def test_a_module_whose_own_import_is_missing(
    tmp_path: Path, image_folder: Path, run_cli: Cli
) -> None:
    source = "import no_such_package_for_tunesmith\n" + NET + "\n\ndef build():\n    return net()\n"
    config = _user_config(tmp_path, image_folder, "missing_import_net", source)

    assert_user_error(
        run_cli(["validate", config]), f"{tmp_path / 'missing_import_net.py'}: model.backbone: ",
        "cannot import module 'missing_import_net': No module named "
        "'no_such_package_for_tunesmith'",
        "install what that file imports",
    )


# ----------------------------------------------------------------------------------------------
# python: user code with pretrained weights takes adapters

PRETRAINED_NET = '''
from torch import nn


def build(in_features):
    return nn.Sequential(nn.Linear(in_features, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 16), nn.ReLU())
'''


def test_a_users_module_with_pretrained_weights_trains_a_lora_adapter(
    tmp_path: Path, wine_csv: Path
) -> None:
    """LoRA on `python:MODULE:FUNCTION?weights=FILE` was refused as "has none to keep": its
    pretrained weights stay fixed, the adapter trains, and the search's space offers adapters
    for it (not for a module without a weights file, whose weights may be random)."""
    import safetensors.torch
    import torch

    from tunesmith import api
    from tunesmith.config import load_config
    from tunesmith.search import takes_adapters

    (tmp_path / "pretrained_net.py").write_text(PRETRAINED_NET)
    sys.path.insert(0, str(tmp_path))
    try:
        import pretrained_net
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(0)
    original = pretrained_net.build(13)
    weights = tmp_path / "pretrained.safetensors"
    safetensors.torch.save_model(original, str(weights))
    raw = config_dict(tmp_path, data_path=wine_csv,
                      backbone=f"python:pretrained_net:build?weights={weights}",
                      train_settings={"epochs": 3, "precision": "fp32"},
                      model={"strategy": "lora", "peft": {"r": 4}})
    config = write_yaml(tmp_path / "config.yaml", raw)
    assert takes_adapters(load_config(config))
    assert not takes_adapters(load_config(config, ["model.backbone=python:pretrained_net:build"]))
    summary = api.fit(config)
    assert summary.metrics["train"]["strategy"] == "lora"
    adapter = safetensors.torch.load_file(
        str(summary.run_dir / "trials" / "0" / "adapter" / "adapter_model.safetensors"))
    assert any("lora_A" in key for key in adapter) and any("lora_B" in key for key in adapter)
    assert not any(".0." in key.split("network")[-1] for key in adapter)  # the first layer's not
    # the bundle holds the adapters merged in: the frozen first layer as it was pretrained, the
    # adapted ones moved
    bundle = safetensors.torch.load_file(str(summary.run_dir / "best" / "model.safetensors"))
    weights = original.state_dict()
    assert torch.equal(bundle["backbone.network.0.weight"], weights["0.weight"])
    assert not torch.equal(bundle["backbone.network.2.weight"], weights["2.weight"])
