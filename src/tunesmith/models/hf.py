"""`hf:PATH`: a Hugging Face text or vision model from a local folder.

The folder is what `save_pretrained` writes: config.json and the weights, plus a tokenizer (text)
or a preprocessor_config.json (vision). Which one it is decides the modality.

Text encoders are mean-pooled over real tokens (not the [CLS] vector): that is what
sentence-embedding models such as MiniLM were trained for, and a sound default for BERT-style
encoders, needing no pretrained pooler, which many checkpoints lack. Vision models use their own
pooled output where it has no weights of its own (the global average pool of ConvNeXt or ResNet)
and the mean of the final tokens otherwise (ViT, DeiT, DINOv2). An unused pooler layer is left
out at load time, so every parameter the backbone holds is trained.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from pickle import UnpicklingError
from typing import Any, cast

import numpy as np
import torch
from safetensors import SafetensorError

from tunesmith.errors import TunesmithError
from tunesmith.models.backbone import Backbone
from tunesmith.models.weights import key_summary

# Longer inputs are truncated; with per-batch padding the cost follows the real lengths anyway.
DEFAULT_MAX_LENGTH = 256
PROCESSOR_FILE = "preprocessor_config.json"
IMAGENET_DEFAULT = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}  # ViT's own default


HF_FOLDER = "hf"  # the bundle's save_pretrained folder


class HFBackbone(Backbone):
    """What text and vision models share: the transformers network and how it is saved."""

    def __init__(self) -> None:
        super().__init__()
        # The folder the pretrained weights came from (None for a rebuilt bundle): what the
        # network left out of them (the pooler, `_pooler_free_kwargs`) goes back into `hf/`.
        self.pretrained: Path | None = None

    def save_native(self, folder: Path) -> dict[str, str]:
        """`hf/`: the fine-tuned network as `save_pretrained` writes it, with its tokenizer or
        image processor, which plain `transformers.AutoModel.from_pretrained` loads (the encoder,
        and the checkpoint's pooler as it was: tunesmith pools by mean and never trains it; the
        head is tunesmith's, in model.safetensors)."""
        target = folder / HF_FOLDER
        network = cast(Any, self.network)
        state = network.state_dict()
        pooler = {} if self.pretrained is None else {
            key: tensor for key, tensor in _checkpoint_pooler(self.pretrained).items()
            if key not in state}
        network.save_pretrained(target, safe_serialization=True,
                                state_dict={**state, **pooler} if pooler else None)
        self.save_preprocessor(target)
        return {"library": "transformers", "folder": HF_FOLDER,
                "load": f"transformers.AutoModel.from_pretrained('{HF_FOLDER}')"}

    def save_preprocessor(self, folder: Path) -> None:
        raise NotImplementedError

    def save_config(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        cast(Any, self.network).config.save_pretrained(folder)


class HFTextBackbone(HFBackbone):
    modality = "text"

    def __init__(self, network: Any, tokenizer: Any, *, max_length: int) -> None:
        super().__init__()
        self.network = network
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.num_features = int(network.config.hidden_size)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        encoded = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return [list(ids) for ids in encoded["input_ids"]]

    def length_for(self, texts: list[str], *, quantile: float = 0.95, sample: int = 2_000) -> int:
        """Token length covering `quantile` of the texts (an evenly spaced sample), rounded up to a
        multiple of 8 and capped by the model: longer outliers are truncated rather than making
        every length-grouped batch of long texts pay for them."""
        step = max(1, len(texts) // sample)
        lengths = [len(ids) for ids in self.tokenizer(texts[::step], truncation=False)["input_ids"]]
        wanted = (
            int(np.ceil(np.quantile(lengths, quantile) / 8) * 8) if lengths else self.max_length
        )
        return max(8, min(self.max_length, wanted))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = inputs["attention_mask"]
        hidden = self.network(input_ids=inputs["input_ids"], attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled: torch.Tensor = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return pooled

    def preprocessing(self) -> dict[str, Any]:
        return {"kind": "tokenizer", "max_length": self.max_length, "pooling": "mean"}

    def save_architecture(self, folder: Path) -> dict[str, Any]:
        self.save_config(folder)
        self.save_preprocessor(folder)
        return {"source": "hf", "folder": folder.name, "max_length": self.max_length}

    def save_preprocessor(self, folder: Path) -> None:
        # Saved with the length the model was fine-tuned at: plain transformers then truncates
        # (truncation=True) where tunesmith does, and predicts as the bundle does.
        self.tokenizer.model_max_length = self.max_length
        self.tokenizer.save_pretrained(folder)


class HFVisionBackbone(HFBackbone):
    modality = "image"

    def __init__(self, network: Any, processor: dict[str, Any], *, image_size: int) -> None:
        super().__init__()
        self.network = network
        self.processor = processor  # the preprocessor_config.json values
        self.image_size = image_size
        self.num_features = _vision_features(network.config)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        output = self.network(pixel_values=inputs["pixel_values"])
        pooled = getattr(output, "pooler_output", None)
        if pooled is None:
            hidden = output.last_hidden_state
            pooled = hidden.mean(dim=1) if hidden.ndim == 3 else hidden.mean(dim=(2, 3))
        return pooled.flatten(1)  # type: ignore[no-any-return]

    @property
    def resizable(self) -> bool:
        """Patch-based transformers (ViT, DeiT) embed positions for one size; convnets do not."""
        return not hasattr(self.network.config, "patch_size")

    def pretrained_stats(self) -> dict[str, Any]:
        return {**_stats(self.processor), "pretrained_size": _processor_size(self.processor)}

    def preprocessing(self) -> dict[str, Any]:
        stats = _stats(self.processor)
        return {"kind": "image", "size": self.image_size, **stats}

    def save_architecture(self, folder: Path) -> dict[str, Any]:
        self.save_config(folder)
        self.save_preprocessor(folder)
        return {"source": "hf", "folder": folder.name, "image_size": self.image_size}

    def save_preprocessor(self, folder: Path) -> None:
        import json

        folder.mkdir(parents=True, exist_ok=True)
        (folder / PROCESSOR_FILE).write_text(json.dumps(self.processor, indent=2) + "\n")


def _vision_features(config: Any) -> int:
    sizes = getattr(config, "hidden_sizes", None)  # ConvNeXt, ResNet: one width per stage
    if sizes:
        return int(sizes[-1])
    return int(config.hidden_size)


def _stats(processor: dict[str, Any]) -> dict[str, list[float]]:
    mean = processor.get("image_mean", IMAGENET_DEFAULT["mean"])
    std = processor.get("image_std", IMAGENET_DEFAULT["std"])
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def _processor_size(processor: dict[str, Any]) -> int:
    size = processor.get("crop_size") or processor.get("size") or 224
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge") or 224
    return int(size)


# ----------------------------------------------------------------------------------------------
# loading


def check_folder(path: Path, field: str) -> None:
    """A folder that `save_pretrained` wrote: it exists and holds config.json."""
    if not path.exists():
        raise TunesmithError(
            "model folder not found",
            file=path,
            field=field,
            fix="point hf: at a local folder saved with save_pretrained "
            "(config.json, weights, tokenizer or preprocessor_config.json)",
        )
    if not (path / "config.json").is_file():
        raise TunesmithError(
            "not a Hugging Face model folder: config.json is missing",
            file=path,
            field=field,
            fix="point hf: at the folder that holds config.json and the weights",
        )


def _load_config(path: Path, field: str, *, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    remote = _needs_remote_code(path)
    if remote and not trust_remote_code:
        raise TunesmithError(
            "this model needs trust_remote_code: loading it runs Python code shipped in the model "
            f"folder ({remote})",
            file=path / "config.json",
            field=field,
            fix="use a model plain transformers supports, or, if you trust the folder's code, set "
            "model.trust_remote_code: true",
        )
    try:
        return AutoConfig.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, ImportError) as error:
        raise TunesmithError(
            f"cannot read the model config: {str(error).splitlines()[0]}",
            file=path / "config.json",
            field=field,
            fix="use a config.json written by save_pretrained for a model transformers knows",
        ) from None


def _needs_remote_code(path: Path) -> str | None:
    """The classes config.json maps to code in the folder, if any (without importing anything)."""
    import json

    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    auto_map = raw.get("auto_map") if isinstance(raw, dict) else None
    if not auto_map:
        return None
    return ", ".join(f"{key}: {value}" for key, value in sorted(auto_map.items()))


# What `save_pretrained` writes for a tokenizer: one of these is its vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")


def _load_tokenizer(path: Path, field: str, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        # transformers would build a tokenizer of a handful of special tokens from config.json
        # alone, and every word would train as [UNK].
        raise TunesmithError(
            f"the model folder has no tokenizer vocabulary (none of {', '.join(TOKENIZER_FILES)})",
            file=path,
            field=field,
            fix="save the model's tokenizer into the folder: "
            "AutoTokenizer.from_pretrained(name).save_pretrained(folder)",
        )
    try:
        return AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, TypeError) as error:
        raise TunesmithError(
            f"cannot load the tokenizer: {error}",
            file=path,
            field=field,
            fix="save the tokenizer into the model folder (tokenizer.save_pretrained(folder)), or "
            "a preprocessor_config.json for a vision model",
        ) from None


def _pooler_free_kwargs(config: Any, *, trust_remote_code: bool) -> dict[str, Any]:
    """`add_pooling_layer=False` where the model class takes it: mean pooling replaces the pooler,
    whose parameters would otherwise sit in the model without ever getting a gradient."""
    from transformers import AutoModel

    try:
        mapped = AutoModel._model_mapping[type(config)]
    except KeyError:
        return {}
    # A mapping entry is a class, or a (slow, fast) pair of them.
    candidates = mapped if isinstance(mapped, tuple) else (mapped,)
    model_class = next((c for c in candidates if c is not None), None)
    if model_class is None:
        return {}
    accepted = inspect.signature(model_class).parameters
    return {"add_pooling_layer": False} if "add_pooling_layer" in accepted else {}


def _load_network(path: Path, config: Any, field: str, *, trust_remote_code: bool) -> Any:
    from transformers import AutoModel
    from transformers.utils import logging

    logging.disable_progress_bar()  # tunesmith draws its own progress; one bar per weight is noise
    logging.set_verbosity_error()  # the pooler left out is reported as unexpected keys
    try:
        network, info = AutoModel.from_pretrained(
            path,
            config=config,
            local_files_only=True,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            **_pooler_free_kwargs(config, trust_remote_code=trust_remote_code),
        )
    except UnpicklingError:
        raise TunesmithError(
            "the weights file is a pickle holding more than tensors: loading it would run code "
            "it carries, which tunesmith never does",
            file=path,
            field=field,
            fix="convert the weights to model.safetensors where you trust them "
            "(model.save_pretrained(folder, safe_serialization=True))",
        ) from None
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:  # truncated, foreign
        raise TunesmithError(
            f"cannot load the model weights: {str(error).splitlines()[0]}",
            file=path,
            field=field,
            fix="check that the folder holds weights saved for this config (model.safetensors)",
        ) from None
    missing = list(info.get("missing_keys") or [])
    mismatched = [str(item[0]) for item in info.get("mismatched_keys") or []]
    if missing or mismatched:
        unexpected = [key for key in info.get("unexpected_keys") or [] if "pooler" not in key]
        raise TunesmithError(
            "the weights do not match the architecture in config.json: "
            + key_summary(
                missing_keys=missing, unexpected_keys=unexpected, wrong_shapes=mismatched
            ),
            file=path,
            field=field,
            fix="use weights saved with this config (save_pretrained writes both together)",
        )
    return network


def _max_length(tokenizer: Any, config: Any, requested: int | None, path: Path) -> int:
    positions = getattr(config, "max_position_embeddings", None)
    limits = [DEFAULT_MAX_LENGTH] + ([positions] if isinstance(positions, int) else [])
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and model_max < 1_000_000:
        limits.append(model_max)
    if requested is None:
        return min(limits)
    # The position embeddings end there (RoBERTa's 514 hold 512 tokens and 2 offsets): a
    # longer text is an indexing error mid-training. A tokenizer's own lower limit is advice
    # (a bundle's says the length it was fine-tuned at), not a limit.
    hard = positions if isinstance(positions, int) else None
    if hard is not None and isinstance(model_max, int) and hard - 2 <= model_max < hard:
        hard = model_max
    if hard is not None and requested > hard:
        raise TunesmithError(
            f"data.max_length {requested} is above the {hard} tokens this model reads",
            file=path / "config.json", field="data.max_length",
            fix=f"set data.max_length to {hard} or less (or auto)")
    return requested


def folder_modality(path: Path) -> str:
    """`image` for a folder with an image preprocessor config, `text` otherwise."""
    import json

    processor = path / PROCESSOR_FILE
    if processor.is_file():
        try:
            raw = json.loads(processor.read_text())
        except ValueError:
            raw = {}
        if isinstance(raw, dict) and ("image_mean" in raw or "image_processor_type" in raw):
            return "image"
    return "text"


def load_pretrained(
    path: Path,
    *,
    field: str,
    max_length: int | None = None,
    image_size: int | None = None,
    trust_remote_code: bool = False,
) -> HFBackbone:
    """The pretrained network in `path`, with its tokenizer or image preprocessing."""
    check_folder(path, field)
    config = _load_config(path, field, trust_remote_code=trust_remote_code)
    network = _load_network(path, config, field, trust_remote_code=trust_remote_code)
    backbone = _with_modality(path, network, config, field, max_length=max_length,
                              image_size=image_size, trust_remote_code=trust_remote_code)
    backbone.pretrained = path
    return backbone


def _checkpoint_pooler(path: Path) -> dict[str, torch.Tensor]:
    """The pooler tensors of the safetensors weights in `path`, named as in the base model
    (`bert.pooler.dense.weight` is `pooler.dense.weight`); none when it has no pooler."""
    from safetensors import safe_open

    found: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as weights:
            for key in weights.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
                if key.startswith("pooler.") or ".pooler." in key:
                    found[key[key.index("pooler."):]] = weights.get_tensor(key)
    return found


def _with_modality(path: Path, network: Any, config: Any, field: str, *,
                   max_length: int | None, image_size: int | None,
                   trust_remote_code: bool) -> HFBackbone:
    """The network with its tokenizer or image preprocessing, as the folder holds."""
    if folder_modality(path) == "image":
        processor = _read_processor(path)
        pretrained = _processor_size(processor)
        vision = HFVisionBackbone(network, processor, image_size=image_size or pretrained)
        if vision.image_size != pretrained and not vision.resizable:
            raise TunesmithError(
                f"this patch transformer embeds positions for {pretrained}x{pretrained} images, "
                f"not {vision.image_size}x{vision.image_size}",
                file=path,
                field="data.image_size",
                fix=f"set data.image_size to {pretrained} (or auto)",
            )
        return vision
    tokenizer = _load_tokenizer(path, field, trust_remote_code=trust_remote_code)
    _check_vocabulary(tokenizer, network, path, field)
    return HFTextBackbone(network, tokenizer,
                          max_length=_max_length(tokenizer, config, max_length, path))


def _read_processor(path: Path) -> dict[str, Any]:
    import json

    raw: dict[str, Any] = json.loads((path / PROCESSOR_FILE).read_text())
    return raw


def _check_vocabulary(tokenizer: Any, encoder: Any, path: Path, field: str) -> None:
    """A tokenizer that emits ids past the embedding table would crash mid-training."""
    rows = int(encoder.get_input_embeddings().num_embeddings)
    if len(tokenizer) > rows:
        raise TunesmithError(
            f"the tokenizer has {len(tokenizer)} tokens but the model embeds only {rows}",
            file=path,
            field=field,
            fix="save the tokenizer that belongs to this model into the folder",
        )


def rebuild(folder: Path, info: dict[str, Any]) -> HFBackbone:
    """The architecture saved by `save_architecture`, with freshly initialized weights."""
    from transformers import AutoModel

    config = _load_config(folder, "backbone", trust_remote_code=False)
    network = AutoModel.from_config(
        config, **_pooler_free_kwargs(config, trust_remote_code=False)
    )
    if "image_size" in info:
        processor = _read_processor(folder)
        return HFVisionBackbone(network, processor, image_size=int(info["image_size"]))
    tokenizer = _load_tokenizer(folder, "backbone")
    return HFTextBackbone(network, tokenizer, max_length=int(info["max_length"]))
