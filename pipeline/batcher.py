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
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


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
        self._queue: list[tuple[list[T], asyncio.Future[list[R]]]] = []
        self._queued = 0
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, items: list[T]) -> list[R]:
        """This call's results, in order; the error of the pass it shared, if that failed."""
        if not items:
            return []
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._queue.append((items, future))
        self._queued += len(items)
        if self._queued >= self.max_items:
            self._full.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            if self.wait_s > 0 and self._queued < self.max_items:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.wait_s)
            while self._queue:
                await self._pass(self._take())
        finally:
            self._task = None
            for _, fut in self._queue:  # only when cancelled: nothing else leaves calls queued
                if not fut.done():
                    fut.set_exception(RuntimeError("batch cancelled"))
            self._queue.clear()
            self._queued = 0

    def _take(self) -> list[tuple[list[T], asyncio.Future[list[R]]]]:
        """Queued calls in arrival order up to `max_items` items (at least one call, whole)."""
        taken: list[tuple[list[T], asyncio.Future[list[R]]]] = []
        size = 0
        while self._queue and (not taken or size + len(self._queue[0][0]) <= self.max_items):
            call = self._queue.pop(0)
            taken.append(call)
            size += len(call[0])
        self._queued -= size
        self._full.clear()
        return [(items, fut) for items, fut in taken if not fut.cancelled()]

    async def _pass(self, calls: list[tuple[list[T], asyncio.Future[list[R]]]]) -> None:
        if not calls:
            return
        try:
            results = await self._run([item for items, _ in calls for item in items])
        except BaseException as exc:  # every caller of this pass gets the error
            for _, fut in calls:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError("batch cancelled"))
            if not isinstance(exc, Exception):
                raise
            return
        k = 0
        for items, fut in calls:
            if not fut.done():
                fut.set_result(list(results[k : k + len(items)]))
            k += len(items)
