"""Process-level tuning shared by the worker and the API.

The garbage collector: a worker or API process imports a large, long-lived heap (Faust, aiokafka, numpy,
River, FastAPI: ~120k tracked objects) and then allocates many short-lived containers per batch or
request. CPython's default thresholds (700 allocations per young collection, a full collection every ~100
of those) make it re-scan the long-lived heap over and over. Measured on the worker's batch preparation
(parse, validate, compile operations; 20,000 realistic events): 15.1-15.6 us/event with the defaults,
12.1-13.1 with the start-up heap frozen, 10.9-11.2 frozen with a 20,000-allocation young generation,
11.1-13.7 with the collector off.

A worker keeps whole batches alive: the batch being written, the one being prepared and the records the
consumer has fetched ahead, ~16 tracked containers per prepared event (event, properties, operations) plus
the Kafka records. With a 20,000-allocation young generation the collector ran ~6 times per 2,000-event
batch and re-scanned those batches each time, ~20% of the worker's CPU (measured with ``gc.callbacks``
in ``python -m bench.throughput``). ``batch_young_threshold`` sizes the young generation above what the
batches in flight hold, so a collection runs when garbage accumulates rather than whenever a batch is
being built: the worker's CPU per event fell from 28.2-31.7 to 24.7-25.7 us (4 alternated runs).

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
