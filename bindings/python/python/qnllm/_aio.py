"""AsyncUnifiedNeuralEngine: the asyncio twin; each call runs on a thread of its own pool
while the native engine releases the GIL, so the event loop never blocks."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from typing import Any, Callable, List, Optional, TypeVar

from ._engine import Metrics, UnifiedNeuralEngine
from ._native import Reasoning

T = TypeVar("T")


class AsyncUnifiedNeuralEngine:
    """``await engine.reason(x)``: the same engine as :class:`UnifiedNeuralEngine` (same
    arguments), with coroutine methods and ``async with``."""

    def __init__(self, *args: Any, concurrency: int = 4, **kwargs: Any) -> None:
        self.engine = UnifiedNeuralEngine(*args, **kwargs)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, concurrency), thread_name_prefix="qnllm-aio"
        )

    async def _run(self, f: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(f, *args))

    async def start(self) -> None:
        """Starts the embedded hub."""
        await self._run(self.engine.start)

    async def stop(self) -> None:
        """Stops the hub, the engine's threads and this twin's pool."""
        await self._run(self.engine.stop)
        self._pool.shutdown(wait=True)

    async def reason(self, encoding: Any) -> Reasoning:
        """As UnifiedNeuralEngine.reason."""
        return await self._run(self.engine.reason, encoding)

    async def reason_batch(self, encodings: Any) -> List[Reasoning]:
        """As UnifiedNeuralEngine.reason_batch."""
        return await self._run(self.engine.reason_batch, encodings)

    async def coordinate(self, encoding: Any, learn: bool = True) -> dict:
        """As UnifiedNeuralEngine.coordinate."""
        return await self._run(self.engine.coordinate, encoding, learn)

    async def learn(self, encoding: Any, label: int) -> Optional[dict]:
        """As UnifiedNeuralEngine.learn."""
        return await self._run(self.engine.learn, encoding, label)

    def get_metrics(self) -> Metrics:
        """As UnifiedNeuralEngine.get_metrics (it does not block)."""
        return self.engine.get_metrics()

    def set_strategy(self, name: str) -> None:
        """As UnifiedNeuralEngine.set_strategy."""
        self.engine.set_strategy(name)

    async def __aenter__(self) -> "AsyncUnifiedNeuralEngine":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()
