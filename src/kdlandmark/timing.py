"""The one timing helper of the package: repeated calls of a function, timed.

Every figure the package measures goes through :func:`time_calls`: the evaluator's CPU latency
(:func:`kdlandmark.evaluate.evaluator.measure_latency`) and the benchmarks of :mod:`kdlandmark.bench`
(synthesis, prepare, augmentation, training steps, inference).  Work that runs asynchronously (CUDA)
passes ``sync``, called after the warm-up and after the last call only, so calls may overlap as they
do in real use; the total then covers all of their work.  Work to be compared as a ratio on a noisy
machine goes through :func:`time_interleaved`: one call of each in turn, so a slow spell of the machine
falls on all of them alike.  Imports nothing heavy.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Timing", "time_calls", "time_interleaved"]


@dataclass(frozen=True)
class Timing:
    """The times of the timed calls.

    Attributes:
        times_ms: each call's time from its start to its return, in milliseconds (with ``sync``, a
            call's asynchronous work may still run after it returned: use ``total_s`` then).
        total_s: seconds from the first timed call's start to the end of the last one's work (``sync``
            included).
    """

    times_ms: list[float]
    total_s: float

    @property
    def calls(self) -> int:
        return len(self.times_ms)

    @property
    def median_ms(self) -> float:
        return float(statistics.median(self.times_ms))

    @property
    def min_ms(self) -> float:
        return float(min(self.times_ms))

    @property
    def p95_ms(self) -> float:
        """95th percentile (linear interpolation between the two nearest calls)."""
        ordered = sorted(self.times_ms)
        pos = 0.95 * (len(ordered) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(ordered) - 1)
        return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))

    def rate(self, items_per_call: float = 1.0) -> float:
        """Items per second over the whole timed stretch (``calls * items_per_call / total_s``)."""
        return self.calls * items_per_call / max(self.total_s, 1e-12)


def time_calls(fn: Callable[[], Any], *, runs: int = 1, warmup: int = 0, max_seconds: float | None = None,
               min_runs: int = 5, sync: Callable[[], None] | None = None,
               clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Time ``runs`` calls of ``fn`` after ``warmup`` untimed ones.

    Args:
        fn: the work, called without arguments.
        runs: timed calls.
        warmup: untimed calls first (compilation, caches, allocator).
        max_seconds: stop early once this much time has passed, but not before ``min_runs`` calls.
        min_runs: the fewest timed calls when ``max_seconds`` stops the loop.
        sync: waits for asynchronous work (``torch.cuda.synchronize``); called after the warm-up and
            after the last call.
        clock: ``time.perf_counter`` (wall time) or ``time.process_time`` (this process's CPU time).
    """
    for _ in range(max(0, warmup)):
        fn()
    if sync is not None:
        sync()
    times: list[float] = []
    start = clock()
    deadline = start + max_seconds if max_seconds is not None else math.inf
    while len(times) < runs and (len(times) < min_runs or clock() < deadline):
        t0 = clock()
        fn()
        times.append(1000.0 * (clock() - t0))
    if sync is not None:
        sync()
    return Timing(times, clock() - start)


def time_interleaved(fns: dict[str, Callable[[], Any]], *, runs: int, warmup: int = 0,
                     clock: Callable[[], float] = time.perf_counter) -> dict[str, Timing]:
    """Time ``runs`` calls of each function of ``fns``, interleaved: each step calls every function
    once, in an order rotated by one at each step (each function takes the first place, the second,
    ... in turn), after ``warmup`` untimed steps in the given order.  Returns a :class:`Timing` per
    name (``total_s``: the sum of its calls)."""
    names = list(fns)
    if not names:
        raise ValueError("time_interleaved: no functions to time")
    for _ in range(max(0, warmup)):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for step in range(runs):
        k = step % len(names)
        for name in names[k:] + names[:k]:
            t0 = clock()
            fns[name]()
            times[name].append(1000.0 * (clock() - t0))
    return {name: Timing(ts, sum(ts) / 1000.0) for name, ts in times.items()}
