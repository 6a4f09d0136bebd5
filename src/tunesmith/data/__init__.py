"""The data stage: read, check and split what the user has on disk. It knows no model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunesmith.config import Config
from tunesmith.data.images import check_images
from tunesmith.data.sources import Examples, Modality, infer_modality, label_names, read_examples
from tunesmith.data.split import Splits, ids_hash, make_splits
from tunesmith.errors import TunesmithError

TASK_MODALITY: dict[str, Modality] = {
    "text-classification": "text",
    "image-classification": "image",
}


@dataclass(frozen=True)
class TaskData:
    """The three parts of a classification dataset and its class names (sorted)."""

    task: str
    classes: list[str]
    train: Examples
    val: Examples
    test: Examples
    splits: dict[str, Any]

    @property
    def modality(self) -> Modality:
        return self.train.modality

    def targets(self, part: Examples) -> list[int]:
        index = {name: i for i, name in enumerate(self.classes)}
        return [index[label] for label in part.labels]


def resolve_task(config: Config) -> str:
    if config.task != "auto":
        return config.task
    modality = infer_modality(config.path(config.data.train))
    return "image-classification" if modality == "image" else "text-classification"


def load_task_data(config: Config) -> TaskData:
    """Read, check and split the data the config names."""
    task = resolve_task(config)
    modality = TASK_MODALITY[task]
    data = config.data
    read = {"text_column": data.text_column, "label_column": data.label_column}
    train_path = config.path(data.train)
    everything = read_examples(train_path, modality, **read, field="data.train")
    given_test = (
        read_examples(config.path(data.test), modality, **read, field="data.test")
        if data.test is not None
        else None
    )
    if modality == "image":
        check_images(everything.inputs, field="data.train")
        if given_test is not None:
            check_images(given_test.inputs, field="data.test")

    classes = label_names(everything.labels)
    if len(classes) < 2:
        raise TunesmithError(
            f"the labels have a single class ({classes[0]!r}); classification needs two or more",
            file=train_path,
            field="data.label_column" if modality == "text" else "data.train",
            fix="add examples of the other classes, or point data.label_column at the real label",
        )
    if given_test is not None:
        unseen = sorted(set(given_test.labels) - set(classes))
        if unseen:
            raise TunesmithError(
                f"test labels {unseen[:5]} never occur in the training data",
                file=config.path(data.test) if data.test else None,
                field="data.label_column",
                fix="make sure train and test use the same label values",
            )

    index = {name: i for i, name in enumerate(classes)}
    parts: Splits = make_splits(
        [index[label] for label in everything.labels],
        data.split,
        source=train_path,
        test_given=given_test is not None,
    )
    train = everything.subset(parts.train)
    val = everything.subset(parts.val)
    test = given_test if given_test is not None else everything.subset(parts.test)
    record = {
        "method": "stratified" if data.split.stratify else "random",
        "seed": data.split.seed,
        "val_fraction_of_train": data.split.val,
        "test": "given file" if given_test is not None else f"{data.split.test:.0%} of all rows",
        "parts": {
            name: {"rows": len(part), "source": str(part.source), "ids_sha256": ids_hash(part.ids)}
            for name, part in (("train", train), ("val", val), ("test", test))
        },
    }
    return TaskData(task, classes, train, val, test, record)


__all__ = ["Examples", "TaskData", "load_task_data", "resolve_task"]
