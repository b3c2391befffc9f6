"""The floor: a bare grpc.aio + uvloop KeyValue server over a dict, with nothing of the proxy in it.

No routing, no validation, no health or reflection service: what any Python gRPC server on this
machine costs per call. The proxy's figures are read as a ratio to this one, measured in the same run.

    .venv/bin/python bench/floor_server.py [--listen 127.0.0.1:0]

Prints `floor: serving on HOST:PORT` on stdout once it accepts calls; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
import uvloop
from turnout.kv.v1 import kv_pb2, kv_pb2_grpc

KEYS_PAGE = 1000


class DictKeyValue(kv_pb2_grpc.KeyValueServicer):
    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}

    async def Get(self, request: kv_pb2.GetRequest, context: grpc.aio.ServicerContext[Any, Any]) -> kv_pb2.GetResponse:
        value = self._data.get(request.key)
        if value is None:
            return kv_pb2.GetResponse(found=False)
        return kv_pb2.GetResponse(found=True, value=value)

    async def Set(self, request: kv_pb2.SetRequest, context: grpc.aio.ServicerContext[Any, Any]) -> kv_pb2.SetResponse:
        self._data[request.key] = request.value
        return kv_pb2.SetResponse()

    async def Has(self, request: kv_pb2.HasRequest, context: grpc.aio.ServicerContext[Any, Any]) -> kv_pb2.HasResponse:
        return kv_pb2.HasResponse(found=request.key in self._data)

    async def Delete(
        self, request: kv_pb2.DeleteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> kv_pb2.DeleteResponse:
        return kv_pb2.DeleteResponse(existed=self._data.pop(request.key, None) is not None)

    async def Keys(
        self, request: kv_pb2.KeysRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[kv_pb2.KeysResponse]:
        keys = sorted(k for k in self._data if k.startswith(request.prefix))
        for start in range(0, len(keys), KEYS_PAGE):
            yield kv_pb2.KeysResponse(keys=keys[start : start + KEYS_PAGE])


async def serve(listen: str) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    kv_pb2_grpc.add_KeyValueServicer_to_server(DictKeyValue(), server)
    port = server.add_insecure_port(listen)
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    print(f"floor: serving on {listen.rpartition(':')[0]}:{port}", flush=True)
    await stopping.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:0")
    uvloop.run(serve(parser.parse_args().listen))


if __name__ == "__main__":
    main()
