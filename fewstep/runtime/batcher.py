"""Micro-batching for the server: concurrent requests with the same settings share one engine call.

A bounded queue of jobs; one worker takes the oldest job, waits up to `max_wait_ms` for more jobs with the same
(steps, guidance, negative prompt) until `max_batch` images are gathered, runs them in one `Generator.generate`
call on a worker thread, and hands each job its images. A full queue is refused at once (the server answers
429); jobs whose client gave up are dropped before they cost engine time; `drain()` finishes what was accepted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field

import numpy as np

from fewstep.runtime.generator import Generator


class QueueFull(RuntimeError):
    """The bounded queue cannot take another job now."""


@dataclass
class Job:
    prompts: list[str]
    seeds: list[int]
    steps: int | None
    guidance: float | None
    negative_prompt: str | None = None
    future: asyncio.Future[np.ndarray] | None = None  # set when submitted
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def key(self) -> tuple[int | None, float | None, str | None]:
        return (self.steps, self.guidance, self.negative_prompt or None)

    @property
    def settled(self) -> bool:
        """Answered, or given up by its client (timeout or disconnect): no more work for it."""
        return self.future is None or self.future.done()

    def resolve(self, images: np.ndarray) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_result(images)

    def fail(self, error: BaseException) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_exception(error)


@dataclass
class BatchReport:
    """What the worker did for one engine call (for metrics)."""

    images: int
    jobs: int
    seconds: float
    stage_times: dict[str, float]
    queue_wait: list[float]


class MicroBatcher:
    def __init__(self, gen: Generator, max_batch: int = 8, max_wait_ms: float = 10.0, max_queue: int = 64,
                 on_batch: Callable[[BatchReport], None] | None = None):  # fmt: skip
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0")
        self.gen, self.max_batch, self.max_wait = gen, max_batch, max_wait_ms / 1e3
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=max_queue)
        self.on_batch = on_batch
        self._held: list[Job] = []  # jobs taken from the queue that did not fit the current batch's settings
        self._worker: asyncio.Task[None] | None = None
        self._busy = False

    @property
    def depth(self) -> int:
        return self.queue.qsize() + len(self._held)

    @property
    def idle(self) -> bool:
        return self.depth == 0 and not self._busy

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, job: Job) -> np.ndarray:
        """Queue a job (QueueFull at once when full) and wait for its images (uint8 (n, H, W, C))."""
        if len(job.prompts) > self.max_batch:
            raise ValueError(f"at most {self.max_batch} images per request; got {len(job.prompts)}")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        job.future = future
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull(f"queue full ({self.queue.maxsize} requests waiting)") from None
        return await future

    async def _next(self) -> Job:
        if self._held:
            return self._held.pop(0)
        return await self.queue.get()

    async def _gather(self, first: Job) -> list[Job]:
        jobs, n = [first], len(first.prompts)
        deadline = time.perf_counter() + self.max_wait
        keep = []
        for j in self._held:  # held jobs first, oldest first
            if j.key == first.key and n + len(j.prompts) <= self.max_batch:
                jobs.append(j)
                n += len(j.prompts)
            else:
                keep.append(j)
        self._held = keep
        while n < self.max_batch:
            timeout = deadline - time.perf_counter()
            if timeout <= 0:
                break
            try:
                j = await asyncio.wait_for(self.queue.get(), timeout)
            except TimeoutError:
                break
            if j.key == first.key and n + len(j.prompts) <= self.max_batch:
                jobs.append(j)
                n += len(j.prompts)
            else:
                self._held.append(j)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next()
            if first.settled:  # the client gave up (timeout or disconnect): costs nothing
                continue
            self._busy = True  # from here its jobs are in no queue: not idle (drain and eviction wait for them)
            jobs = [j for j in await self._gather(first) if not j.settled]
            if not jobs:
                self._busy = False
                continue
            prompts = [p for j in jobs for p in j.prompts]
            seeds = [s for j in jobs for s in j.seeds]
            start = time.perf_counter()
            try:
                images = await loop.run_in_executor(None, self._generate, prompts, seeds, first)
            except Exception as e:  # a bad request inside a batch fails its batch only
                for j in jobs:
                    j.fail(e)
                self._busy = False
                continue
            seconds = time.perf_counter() - start
            i = 0
            for j in jobs:
                j.resolve(images[i : i + len(j.prompts)])
                i += len(j.prompts)
            self._busy = False
            if self.on_batch:
                self.on_batch(BatchReport(len(prompts), len(jobs), seconds, dict(self.gen.stage_times),
                                          [start - j.enqueued for j in jobs]))  # fmt: skip

    def _generate(self, prompts: list[str], seeds: list[int], first: Job) -> np.ndarray:
        return self.gen.generate(prompts, seeds, steps=first.steps, guidance=first.guidance,
                                 negative_prompt=first.negative_prompt)  # fmt: skip

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until every accepted job is done (graceful shutdown), then stop the worker."""
        deadline = time.perf_counter() + timeout
        while not self.idle and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        if self._worker:
            self._worker.cancel()
            with suppress(asyncio.CancelledError):
                await self._worker  # ended: it holds no engine call and no job any more
