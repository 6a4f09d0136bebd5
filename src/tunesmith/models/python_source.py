"""`python:MODULE:FUNCTION[?weights=FILE]`: a network the user builds in their own code.

The one escape hatch from the closed registry, named explicitly in the config. `FUNCTION()` in
the importable module `MODULE` (the config's folder is searched first) returns an `nn.Module`
that maps a batch to one feature vector per example:

- images: a float tensor (batch, 3, H, W), normalized as the module's optional `mean` and `std`
  attributes say (default ImageNet's), at its optional `image_size` (default 224);
- tables: a float tensor (batch, features) of the standardized, encoded feature columns; the
  function is called with `in_features=N` when its signature takes that argument.

The output is (batch, D): D is the module's `num_features` attribute or is read off one forward
pass. Weights, when given, load from safetensors or a plain state dict, never from a pickle that
runs code. A bundle stores the module and function name; loading it imports them again.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.data.sources import Modality
from tunesmith.errors import TunesmithError
from tunesmith.models.backbone import Backbone
from tunesmith.models.weights import load_weights

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
FIX = (
    "write model.backbone as python:MODULE:FUNCTION, where FUNCTION() in the importable module "
    "MODULE (a .py file beside the config works) returns an nn.Module giving (batch, D) features"
)


class PythonBackbone(Backbone):
    def __init__(
        self,
        network: nn.Module,
        target: str,
        *,
        modality: Modality,
        num_features: int,
        in_features: int | None = None,
        image_size: int | None = None,
        search: Path | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.target = target
        self.search = search  # the folder the module was imported from, for a bundle to reload
        self.modality = modality
        self.num_features = num_features
        self.in_features = in_features
        self.image_size = image_size

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        key = "pixel_values" if self.modality == "image" else "features"
        return self.network(inputs[key])  # type: ignore[no-any-return]

    def preprocessing(self) -> dict[str, Any]:
        if self.modality == "tabular":
            return {"kind": "features", "in_features": self.in_features}
        return {
            "kind": "image",
            "size": self.image_size,
            "mean": [float(v) for v in getattr(self.network, "mean", IMAGENET_MEAN)],
            "std": [float(v) for v in getattr(self.network, "std", IMAGENET_STD)],
        }

    def save_architecture(self, folder: Path) -> dict[str, Any]:
        return {
            "source": "python",
            "target": self.target,
            "modality": self.modality,
            "in_features": self.in_features,
            "image_size": self.image_size,
            "search": str(self.search) if self.search else None,
        }


def _builder(target: str, *, field: str, search: Path | None) -> Any:
    module_name, sep, function_name = target.partition(":")
    if not sep or not module_name or not function_name:
        raise TunesmithError(f"cannot read python:{target}", field=field, fix=FIX)
    added = search is not None and str(search) not in sys.path
    if added:
        sys.path.insert(0, str(search))
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:  # the module, or one it imports, is not there
        found = _module_file(module_name)
        raise TunesmithError(
            f"cannot import module {module_name!r}: {error}",
            file=found,
            field=field,
            fix="install what that file imports, or correct the import" if found else FIX,
        ) from None
    except SyntaxError as error:
        raise TunesmithError(
            f"cannot import module {module_name!r}: {type(error).__name__} at line "
            f"{error.lineno}: {error.msg}",
            file=error.filename,
            field=field,
            fix=f"correct that line (`python -m py_compile {error.filename}` shows it)",
        ) from None
    except Exception as error:  # the module's own top-level code failed: the user's to fix
        raise TunesmithError(
            f"cannot import module {module_name!r}: it raised {_first_line(error)}",
            file=_module_file(module_name),
            field=field,
            fix="fix the error in the module's top-level code (importing it yourself shows "
            "the traceback)",
        ) from None
    finally:
        if added:
            sys.path.remove(str(search))
    builder = getattr(module, function_name, None)
    if not callable(builder):
        raise TunesmithError(
            f"module {module_name!r} has no function {function_name!r}", field=field, fix=FIX
        )
    return builder


def _first_line(error: BaseException) -> str:
    """`Type: first line of the message`, the part of an exception that fits one message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _module_file(module_name: str) -> str | None:
    """The file a module is (or would be) imported from, for a message to name."""
    try:
        spec = importlib.util.find_spec(module_name)
    except Exception:  # a parent package that fails to import: name no file
        return None
    return spec.origin if spec is not None and spec.has_location else None


def _call_arguments(
    builder: Any, in_features: int | None, *, target: str, field: str
) -> dict[str, Any]:
    """The keyword arguments tunesmith calls `builder` with: `in_features` for tables, when it
    takes that argument. A required argument beyond those is an error, not a TypeError later."""
    try:
        parameters = inspect.signature(builder).parameters
    except (TypeError, ValueError):  # no readable signature (a C function): just call it
        return {}
    arguments = {"in_features": in_features} if "in_features" in parameters and in_features else {}
    required = [
        name for name, parameter in parameters.items()
        if parameter.default is inspect.Parameter.empty and name not in arguments
        and parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if required:
        names = ", ".join(required)
        what = "an argument" if len(required) == 1 else "arguments"
        function = target.rpartition(":")[2]
        raise TunesmithError(
            f"python:{target} takes {what} tunesmith does not pass: {names} (it calls "
            f"{function}(), or {function}(in_features=N) for tables)",
            file=_source_file(builder),
            field=field,
            fix=f"give {names} a default, or name a function without required arguments that "
            "calls this one",
        )
    return arguments


def _source_file(builder: Any) -> str | None:
    try:
        return inspect.getsourcefile(builder)
    except TypeError:  # a built-in or C callable has none
        return None


def _build(builder: Any, in_features: int | None, *, target: str, field: str) -> nn.Module:
    arguments = _call_arguments(builder, in_features, target=target, field=field)
    try:
        network = builder(**arguments)
    except Exception as error:  # the user's code: any failure is theirs to fix
        raise TunesmithError(
            f"python:{target} raised {_first_line(error)}",
            file=_source_file(builder),
            field=field,
            fix=f"fix the error in {target.rpartition(':')[2]} (calling it yourself shows the "
            "traceback)",
        ) from None
    if not isinstance(network, nn.Module):
        raise TunesmithError(
            f"python:{target} returned a {type(network).__name__}, not an nn.Module",
            field=field,
            fix=FIX,
        )
    return network


def _feature_width(
    network: nn.Module, modality: Modality, *, in_features: int | None, image_size: int,
    target: str, field: str,
) -> int:
    declared = getattr(network, "num_features", None)
    if isinstance(declared, int) and declared > 0:
        return declared
    shape = (2, in_features or 1) if modality == "tabular" else (2, 3, image_size, image_size)
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            output = network(torch.zeros(shape))
    except Exception as error:  # the user's code: any failure is theirs to fix
        raise TunesmithError(
            f"python:{target} failed on a batch of shape {tuple(shape)}: {error}",
            field=field,
            fix="make the module accept (batch, 3, H, W) images or (batch, features) tables",
        ) from None
    finally:
        network.train(was_training)
    if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape[0] != 2:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise TunesmithError(
            f"python:{target} must return (batch, D) features; it returned {got}",
            field=field,
            fix="end the module with pooling/flattening so each example is one feature vector",
        )
    return int(output.shape[1])


def load_pretrained(
    target: str,
    weights: Path | None,
    *,
    modality: Modality,
    field: str,
    search: Path | None = None,
    in_features: int | None = None,
    image_size: int | None = None,
) -> PythonBackbone:
    builder = _builder(target, field=field, search=search)
    network = _build(builder, in_features, target=target, field=field)
    if weights is not None:
        load_weights(network, weights, field=field, architecture=f"python:{target}")
    size = None
    if modality == "image":
        size = image_size or int(getattr(network, "image_size", 224))
    width = _feature_width(
        network, modality, in_features=in_features, image_size=size or 0, target=target,
        field=field,
    )
    return PythonBackbone(
        network,
        target,
        modality=modality,
        num_features=width,
        in_features=in_features,
        image_size=size,
        search=search,
    )


def rebuild(folder: Path, info: dict[str, Any]) -> PythonBackbone:
    return load_pretrained(
        str(info["target"]),
        None,
        modality=info["modality"],
        field="backbone.target",
        search=Path(info["search"]) if info.get("search") else None,
        in_features=info.get("in_features"),
        image_size=info.get("image_size"),
    )
