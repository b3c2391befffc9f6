"""A real proxy, in this test's event loop, whose new backend stays opening until the test lets it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

import proxy.serving.app
from proxy.backends import open_backend
from proxy.backends.base import Backend
from proxy.config import BackendSpec, Config


@dataclass
class SlowStart:
    proxy: proxy.serving.app.Proxy
    task: asyncio.Task[None]
    #: Set it and the new backend finishes opening.
    opened: asyncio.Event


@contextlib.asynccontextmanager
async def new_backend_held_open(config: Config, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SlowStart]:
    """Run the proxy of `config` until the block ends; its new backend opens only once `opened` is set."""
    opened = asyncio.Event()

    async def slow_open(spec: BackendSpec) -> Backend:
        backend = await open_backend(spec)
        if spec == config.new:
            await opened.wait()
        return backend

    monkeypatch.setattr("proxy.serving.app.open_backend", slow_open)
    monkeypatch.setattr(proxy.serving.app.Proxy, "_install_signal_handlers", lambda self: None)
    running = proxy.serving.app.Proxy(config)
    task = asyncio.create_task(running.run())
    try:
        yield SlowStart(running, task, opened)
    finally:
        opened.set()
        running.stopping.set()
        await asyncio.wait_for(task, 30)
