"""The collector is kept off the objects that outlive a run, and only those.

The size of the frozen set is never compared between two reads: a frozen object still dies when
its last reference goes, so the count can fall by a few at any time (it did, in CI). What is or is
not frozen is told by whether a cycle is collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from pathlib import Path

from test_train import Recorder, prepared_trial
from tunesmith.train import train_trial
from tunesmith.train.heap import frozen_heap


class Node:
    """An object that can take part in a reference cycle, which only the collector frees."""

    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_garbage_from_before_is_freed_on_entry_and_not_frozen() -> None:
    gone_before = cycle()
    with frozen_heap():
        assert gone_before() is None  # collected on entry, not kept alive by the freeze
        assert gc.get_freeze_count() > 1_000  # the interpreter's own objects at least
    assert gc.get_freeze_count() == 0


def test_garbage_made_inside_is_still_collected() -> None:
    with frozen_heap():
        made_inside = cycle()
        assert made_inside() is not None
        gc.collect()
        assert made_inside() is None


def test_blocks_nest_and_only_the_outermost_thaws() -> None:
    with frozen_heap():
        alive = Node()
        alive.other = Node()
        alive.other.other = alive  # a cycle still in use when the inner block starts
        made_between = weakref.ref(alive)
        with frozen_heap():
            del alive
            gc.collect()
            assert made_between() is None  # the inner block froze nothing more
        assert gc.get_freeze_count() > 1_000  # and its end thawed nothing
    assert gc.get_freeze_count() == 0


def test_a_programs_own_freeze_is_left_as_it_is() -> None:
    gc.freeze()
    try:
        alive = Node()
        alive.other = Node()
        alive.other.other = alive  # made after the program's freeze, in use at the block's start
        made_before = weakref.ref(alive)
        with frozen_heap():
            del alive
            gc.collect()
            assert made_before() is None  # nothing more frozen
        assert gc.get_freeze_count() > 1_000  # and nothing of the program's thawed
    finally:
        gc.unfreeze()


def test_a_training_run_trains_with_the_heap_frozen_and_thaws_it(
    text_config: Callable[..., Path], tmp_path: Path
) -> None:
    model, loader, val, settings = prepared_trial(text_config(), epochs=2)
    counts: list[int] = []

    class Counting(Recorder):
        def report(self, value: float, step: int) -> None:
            counts.append(gc.get_freeze_count())
            super().report(value, step)

    result = train_trial(model, loader, val, settings, tmp_path / "t",
                         reporter=Counting(prune_after=99))
    assert len(result.history) == len(counts) == 2
    assert min(counts) > 1_000  # the model, the data and the libraries were out of the walk
    assert gc.get_freeze_count() == 0
