"""Keep Python's garbage collector off the objects a training run or a search cannot free.

The imported libraries (torch, transformers, timm, accelerate, scikit-learn) leave about half a
million tracked objects: functions, types, dicts. Every full collection walks all of them, 0.2 s
each on a 2-core CPU, and full collections come often: one automatic collection every so many
thousand surviving allocations while training, one each time a finished run releases its
model's memory (Accelerate's `free_memory`), one after each search trial. A small table's
5-fold trial paid 0.4 s of collections per fold, about a third of the fold's training, and its
steps ran 12% slower. None of those objects becomes garbage while a run is under way, so for its
duration they are moved where the collector does not look (`gc.freeze`) and put back after it.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

_depth = 0  # how many `frozen_heap` blocks are open: only the outermost freezes and thaws


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Within the block, the objects that existed at its start are not collected (nor walked);
    everything made inside it is collected as usual. Blocks nest: a run inside a search keeps the
    search's frozen set, and only the outermost block puts it back. Where the program has frozen
    objects itself (`gc.get_freeze_count()` above 0 outside any block), the block does nothing."""
    global _depth
    if _depth == 0 and gc.get_freeze_count() > 0:
        yield  # the program's own freeze: thawing at the end would thaw its objects too
        return
    if _depth == 0:
        gc.collect()  # what is garbage already goes now, not at the end of the block
        gc.freeze()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            gc.unfreeze()
