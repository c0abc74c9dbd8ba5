"""Online dynamic batching that never holds a free model back.

`@serve.batch` fills a batch until `max_batch_size` or a timeout, whether or not the model is
busy: at medium concurrency the model sits idle while a half-full batch waits out its timeout,
and a shorter timeout gives smaller batches. Here requests that arrive while a forward pass
runs queue, and the moment it ends they all go into the next one (up to `max_items`). A request
to an idle model runs at once, or, with `wait_s`, waits that long for company (fuller batches
where a forward pass costs the same at any size, as on a GPU). One pass at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


Call = tuple[list[T], "asyncio.Future[list[R]]"]  # one submit(): its items, the future its caller awaits


class Batcher(Generic[T, R]):
    """Merges concurrent calls of `submit(items)` into calls of `run(all_items)`."""

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[Sequence[R]]],
        max_items: int,
        wait_s: float = 0.0,
    ) -> None:
        self._run = run
        self.max_items = max(1, max_items)
        self.wait_s = wait_s
        self._queue: deque[Call[T, R]] = deque()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _queued(self) -> int:
        return sum(len(items) for items, _ in self._queue)

    async def submit(self, items: list[T]) -> list[R]:
        """This call's results, in order; the error of the pass it shared, if that failed."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[R]] = loop.create_future()
        self._queue.append((items, future))
        if self.wait_s > 0 and self._queued() >= self.max_items:
            self._full.set()
        if self._task is None:
            self._task = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            if self.wait_s > 0 and self._queued() < self.max_items:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.wait_s)
            while self._queue:
                await self._pass(self._take())
        finally:
            self._task = None
            _fail(self._queue, RuntimeError("batch cancelled"))  # only when cancelled: else empty
            self._queue.clear()

    def _take(self) -> list[Call[T, R]]:
        """Queued calls in arrival order up to `max_items` items (at least one call, whole)."""
        taken: list[Call[T, R]] = []
        size = 0
        while self._queue and (not taken or size + len(self._queue[0][0]) <= self.max_items):
            taken.append(self._queue.popleft())
            size += len(taken[-1][0])
        return [(items, fut) for items, fut in taken if not fut.cancelled()]

    async def _pass(self, calls: list[Call[T, R]]) -> None:
        if not calls:
            return
        try:
            results = await self._run([item for items, _ in calls for item in items])
        except Exception as exc:  # noqa: BLE001 - every caller of this pass gets the error
            _fail(calls, exc)
            return
        except BaseException:
            _fail(calls, RuntimeError("batch cancelled"))
            raise
        k = 0
        for items, fut in calls:
            if not fut.done():
                fut.set_result(list(results[k : k + len(items)]))
            k += len(items)


def _fail(calls: Iterable[Call[T, R]], exc: Exception) -> None:
    for _, fut in calls:
        if not fut.done():
            fut.set_exception(exc)
