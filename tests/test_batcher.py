"""Online batching: a free model never waits, a busy one gathers what queues behind it."""

from __future__ import annotations

import asyncio
import time

import pytest

from pipeline.batcher import Batcher


class Model:
    """A forward pass that takes `seconds` whatever its size, and remembers each pass."""

    def __init__(self, seconds: float = 0.05, fail_on: str | None = None) -> None:
        self.seconds, self.fail_on = seconds, fail_on
        self.passes: list[list[str]] = []

    async def __call__(self, items: list[str]) -> list[str]:
        self.passes.append(items)
        await asyncio.sleep(self.seconds)
        if self.fail_on in items:
            raise ValueError(f"poisoned by {self.fail_on}")
        return [i.upper() for i in items]


def test_a_lone_call_to_a_free_model_runs_at_once():
    async def main():
        model = Model(seconds=0.0)
        batcher = Batcher(model, max_items=32)
        t = time.perf_counter()
        out = await batcher.submit(["a", "b"])
        return out, time.perf_counter() - t, model.passes

    out, took, passes = asyncio.run(main())
    assert out == ["A", "B"] and passes == [["a", "b"]]
    assert took < 0.5, "no fill timeout for a free model"


def test_calls_arriving_during_a_pass_share_the_next_one_in_order():
    async def main():
        model = Model(seconds=0.05)
        batcher = Batcher(model, max_items=32)
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await asyncio.sleep(0.01)  # the first pass is running
        rest = [asyncio.ensure_future(batcher.submit([f"x{i}", f"y{i}"])) for i in range(5)]
        t = time.perf_counter()
        results = await asyncio.gather(first, *rest)
        return results, model.passes, time.perf_counter() - t

    results, passes, took = asyncio.run(main())
    assert passes[0] == ["a"]
    assert passes[1] == [v for i in range(5) for v in (f"x{i}", f"y{i}")], "one pass, arrival order"
    assert results[1:] == [[f"X{i}", f"Y{i}"] for i in range(5)], "each caller gets its own results"
    assert took < 0.5, "the second pass began when the first ended: no timeout waited out"


def test_a_pass_holds_at_most_max_items_and_never_splits_a_call():
    async def main():
        model = Model(seconds=0.02)
        batcher = Batcher(model, max_items=4)
        busy = asyncio.ensure_future(batcher.submit(["busy"]))
        await asyncio.sleep(0.005)
        calls = [["a", "b", "c"], ["d", "e"], ["f"], ["g", "h", "i", "j", "k"]]
        results = await asyncio.gather(busy, *(batcher.submit(c) for c in calls))
        return results, model.passes

    results, passes = asyncio.run(main())
    assert passes == [["busy"], ["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i", "j", "k"]]
    assert results[4] == ["G", "H", "I", "J", "K"], "a call over max_items runs whole, alone"


def test_a_failed_pass_fails_its_callers_only():
    async def main():
        model = Model(seconds=0.02, fail_on="bad")
        batcher = Batcher(model, max_items=32)
        busy = asyncio.ensure_future(batcher.submit(["ok0"]))
        await asyncio.sleep(0.005)
        shared = [asyncio.ensure_future(batcher.submit([t])) for t in ("ok1", "bad")]
        await asyncio.sleep(0.03)  # the poisoned pass is running; this one queues behind it
        later = asyncio.ensure_future(batcher.submit(["ok2"]))
        return await asyncio.gather(busy, *shared, later, return_exceptions=True)

    busy, ok1, bad, later = asyncio.run(main())
    assert busy == ["OK0"] and later == ["OK2"]
    for res in (ok1, bad):
        assert isinstance(res, ValueError) and "poisoned by bad" in str(res)


def test_a_cancelled_caller_is_left_out_and_the_others_are_answered():
    async def main():
        model = Model(seconds=0.02)
        batcher = Batcher(model, max_items=32)
        busy = asyncio.ensure_future(batcher.submit(["busy"]))
        await asyncio.sleep(0.005)
        gone = asyncio.ensure_future(batcher.submit(["gone"]))
        kept = asyncio.ensure_future(batcher.submit(["kept"]))
        await asyncio.sleep(0)
        gone.cancel()
        return await asyncio.gather(busy, kept), model.passes

    (busy, kept), passes = asyncio.run(main())
    assert kept == ["KEPT"] and passes == [["busy"], ["kept"]]


@pytest.mark.parametrize("fill", [False, True])
def test_wait_s_lets_a_free_model_wait_for_company_until_full(fill):
    async def main():
        model = Model(seconds=0.0)
        batcher = Batcher(model, max_items=3, wait_s=1.0)
        t = time.perf_counter()
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(batcher.submit(["b", "c"] if fill else ["b"]))
        await asyncio.gather(first, second)
        return model.passes, time.perf_counter() - t

    passes, took = asyncio.run(main())
    assert passes == ([["a", "b", "c"]] if fill else [["a", "b"]])
    if fill:
        assert took < 0.5, "a full batch does not wait out wait_s"
    else:
        assert took >= 0.99, "the free model waited for company"
