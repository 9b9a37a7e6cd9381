"""The interleaved timer: every function called once per step, order rotated, each time its own."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdlandmark.timing import time_interleaved


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(0, 12), st.integers(0, 3))
def test_each_function_is_timed_on_its_own_calls_in_rotated_order(count, runs, warmup):
    now = [0.0]
    calls: list[str] = []
    names = [f"f{i}" for i in range(count)]

    def make(i):
        def fn():
            calls.append(names[i])
            now[0] += (i + 1) / 1000.0            # function i takes i + 1 ms on the fake clock
        return fn

    timed = time_interleaved({name: make(i) for i, name in enumerate(names)}, runs=runs, warmup=warmup,
                             clock=lambda: now[0])
    assert list(timed) == names
    for i, name in enumerate(names):
        assert timed[name].times_ms == pytest.approx([i + 1.0] * runs)
        assert timed[name].total_s == pytest.approx(runs * (i + 1) / 1000.0)
    assert calls[: warmup * count] == names * warmup         # warm-up: untimed, in the given order
    steps = [calls[warmup * count + k * count: warmup * count + (k + 1) * count] for k in range(runs)]
    for k, order in enumerate(steps):
        assert order == names[k % count:] + names[: k % count]
    for name in names:                                        # each takes each place in turn
        places = [order.index(name) for order in steps]
        assert all(places.count(p) in (runs // count, runs // count + 1) for p in range(count))


def test_nothing_to_time_is_refused():
    with pytest.raises(ValueError, match="no functions"):
        time_interleaved({}, runs=3)
