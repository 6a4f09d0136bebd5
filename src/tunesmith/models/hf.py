"""`hf:PATH`: a Hugging Face text encoder from a local folder, mean-pooled.

Mean pooling over real tokens (not the [CLS] vector) is what sentence-embedding models such as
MiniLM were trained for, and it is a sound default for BERT-style encoders too: it needs no
pretrained pooler, which many checkpoints lack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesmith.errors import TunesmithError
from tunesmith.models.backbone import Backbone

# Longer inputs are truncated; with per-batch padding the cost follows the real lengths anyway.
DEFAULT_MAX_LENGTH = 256


class HFTextBackbone(Backbone):
    modality = "text"

    def __init__(self, encoder: Any, tokenizer: Any, *, max_length: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.num_features = int(encoder.config.hidden_size)

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
        hidden = self.encoder(input_ids=inputs["input_ids"], attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled: torch.Tensor = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return pooled

    def preprocessing(self) -> dict[str, Any]:
        return {"kind": "tokenizer", "max_length": self.max_length, "pooling": "mean"}

    def save_architecture(self, folder: Path) -> dict[str, Any]:
        folder.mkdir(parents=True, exist_ok=True)
        self.encoder.config.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        return {"source": "hf", "folder": folder.name, "max_length": self.max_length}


def _check_folder(path: Path, field: str) -> None:
    if not path.exists():
        raise TunesmithError(
            "model folder not found",
            file=path,
            field=field,
            fix="point hf: at a local folder saved with save_pretrained "
            "(config.json, weights, tokenizer)",
        )
    if not (path / "config.json").is_file():
        raise TunesmithError(
            "not a Hugging Face model folder: config.json is missing",
            file=path,
            field=field,
            fix="point hf: at the folder that holds config.json and the weights",
        )


def _load_config(path: Path, field: str) -> Any:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise TunesmithError(
            f"cannot read the model config: {str(error).splitlines()[0]}",
            file=path / "config.json",
            field=field,
            fix="use a config.json written by save_pretrained for a model transformers knows",
        ) from None
    if getattr(config, "auto_map", None):
        raise TunesmithError(
            "this model needs trust_remote_code (it runs code shipped with the weights)",
            file=path / "config.json",
            field=field,
            fix="use a model that plain transformers supports",
        )
    return config


def _load_tokenizer(path: Path, field: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise TunesmithError(
            f"cannot load the tokenizer: {error}",
            file=path,
            field=field,
            fix="save the tokenizer into the model folder (tokenizer.save_pretrained(folder))",
        ) from None


def _max_length(tokenizer: Any, config: Any, requested: int | None) -> int:
    limits = [DEFAULT_MAX_LENGTH, getattr(config, "max_position_embeddings", DEFAULT_MAX_LENGTH)]
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and model_max < 1_000_000:
        limits.append(model_max)
    return requested if requested is not None else min(limits)


def load_pretrained(path: Path, *, field: str, max_length: int | None) -> HFTextBackbone:
    """The pretrained encoder and tokenizer in `path`."""
    from transformers import AutoModel
    from transformers.utils import logging

    logging.disable_progress_bar()  # tunesmith draws its own progress; one bar per weight is noise

    _check_folder(path, field)
    config = _load_config(path, field)
    try:
        encoder = AutoModel.from_pretrained(path, config=config, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise TunesmithError(
            f"cannot load the model weights: {error}",
            file=path,
            field=field,
            fix="check that the folder holds weights saved for this config (model.safetensors)",
        ) from None
    tokenizer = _load_tokenizer(path, field)
    _check_vocabulary(tokenizer, encoder, path, field)
    return HFTextBackbone(encoder, tokenizer, max_length=_max_length(tokenizer, config, max_length))


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


def rebuild(folder: Path, info: dict[str, Any]) -> HFTextBackbone:
    """The architecture saved by `save_architecture`, with freshly initialized weights."""
    from transformers import AutoModel

    config = _load_config(folder, "backbone")
    encoder = AutoModel.from_config(config)
    tokenizer = _load_tokenizer(folder, "backbone")
    return HFTextBackbone(encoder, tokenizer, max_length=int(info["max_length"]))
