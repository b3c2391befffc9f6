"""A real KeyValue server (turnout.kv.v1) on loopback whose every call can be made slow: the upstream
of a `grpc` store whose latency a test turns up, for the latency_increase trigger.

It keeps its documents in memory and answers through grpc.aio in the test's own event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from turnout.kv.v1 import kv_pb2, kv_pb2_grpc


class SlowKeyValue(kv_pb2_grpc.KeyValueServicer):
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.delay_s = 0.0

    async def _wait(self) -> None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)

    async def Get(self, request: kv_pb2.GetRequest, context: Any) -> kv_pb2.GetResponse:
        await self._wait()
        value = self.data.get(request.key)
        return kv_pb2.GetResponse(found=value is not None, value=value or b"")

    async def Set(self, request: kv_pb2.SetRequest, context: Any) -> kv_pb2.SetResponse:
        await self._wait()
        self.data[request.key] = request.value
        return kv_pb2.SetResponse()

    async def Has(self, request: kv_pb2.HasRequest, context: Any) -> kv_pb2.HasResponse:
        await self._wait()
        return kv_pb2.HasResponse(found=request.key in self.data)

    async def Delete(self, request: kv_pb2.DeleteRequest, context: Any) -> kv_pb2.DeleteResponse:
        await self._wait()
        return kv_pb2.DeleteResponse(existed=self.data.pop(request.key, None) is not None)

    async def Keys(self, request: kv_pb2.KeysRequest, context: Any) -> AsyncIterator[kv_pb2.KeysResponse]:
        await self._wait()
        keys = sorted(k for k in self.data if k.startswith(request.prefix))
        for start in range(0, len(keys), 1000):
            yield kv_pb2.KeysResponse(keys=keys[start:start + 1000])


class SlowUpstream:
    """The server: `await start()`, its `target`, `service.delay_s` to slow it down, `await stop()`."""

    def __init__(self) -> None:
        self.service = SlowKeyValue()
        self.target = ""
        self._server: grpc.aio.Server | None = None

    async def start(self) -> SlowUpstream:
        self._server = grpc.aio.server()
        kv_pb2_grpc.add_KeyValueServicer_to_server(self.service, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.target = f"127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
