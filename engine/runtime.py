"""Process-level tuning shared by the worker and the API.

The garbage collector: a worker or API process imports a large, long-lived heap (Faust, aiokafka, numpy,
River, FastAPI: ~120k tracked objects) and then allocates many short-lived containers per batch or
request. CPython's default thresholds (700 allocations per young collection, a full collection every ~100
of those) make it re-scan the long-lived heap over and over, so the start-up heap is frozen and the young
generation enlarged (the measurements: ``docs/performance-history.md``, "engine/runtime.py").

A worker keeps whole batches alive: the batch being written, the one being prepared and the records the
consumer has fetched ahead, ~16 tracked containers per prepared event (event, properties, operations) plus
the Kafka records; a young generation smaller than that re-scans the batches over and over.
``batch_young_threshold`` sizes the young generation above what the batches in flight hold, so a
collection runs when garbage accumulates rather than whenever a batch is being built.

>>> import gc
>>> freeze_startup_heap(young_threshold=5_000)
>>> gc.get_threshold()[0]
5000
>>> gc.set_threshold(700, 10, 10); gc.unfreeze()
>>> batch_young_threshold(2_000), batch_young_threshold(10)
(200000, 20000)
"""

from __future__ import annotations

import gc

#: Young-generation threshold once the start-up heap is frozen (CPython's default: 700).
YOUNG_THRESHOLD = 20_000


#: Tracked allocations budgeted per record of a batch: ~16 per prepared event and its Kafka record, for the two
#: batches in flight and the records fetched ahead, with room to spare.
ALLOCATIONS_PER_BATCH_RECORD = 100


def batch_young_threshold(batch_size: int) -> int:
    """Young-generation threshold for a process that keeps batches of ``batch_size`` records alive."""
    return max(YOUNG_THRESHOLD, ALLOCATIONS_PER_BATCH_RECORD * batch_size)


def freeze_startup_heap(young_threshold: int = YOUNG_THRESHOLD) -> None:
    """Move every object alive now (modules, configuration, clients) out of the collector's reach, and
    collect the young generation less often. Call once, when the process has finished starting."""
    gc.collect()
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(young_threshold, g1, g2)
