"""Run a client script unchanged, with an ``authorization: Bearer`` header on every call.

``python -m tests.support.bearer_runner SCRIPT ARGS...`` reads the key from
``MLSERVE_KEY``, makes every channel the script opens (``grpc.insecure_channel``
and ``grpc.aio.insecure_channel``, which tritonclient uses) add the header,
then runs SCRIPT as ``__main__`` with ARGS: the script itself is not changed.
"""

from __future__ import annotations

import os
import runpy
import sys
from typing import Any

import grpc
from grpc import aio


def _with_key(details: Any, key: str) -> Any:
    metadata = [*(details.metadata or ()), ("authorization", f"Bearer {key}")]
    return details._replace(metadata=metadata)


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    def __init__(self, key: str) -> None:
        self.key = key

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_with_key(details, self.key), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_with_key(details, self.key), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(_with_key(details, self.key), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(_with_key(details, self.key), requests)


def _aio_details(details: Any, key: str) -> Any:
    metadata = aio.Metadata(*(details.metadata or ()))
    metadata.add("authorization", f"Bearer {key}")
    return aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _AioBearer:
    """The four aio interceptor methods; grpc.aio files an interceptor under the
    first kind it is an instance of, so each kind gets its own subclass."""

    def __init__(self, key: str) -> None:
        self.key = key

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details, self.key), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details, self.key), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_aio_details(details, self.key), requests)

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_aio_details(details, self.key), requests)


class _AioUnaryUnary(_AioBearer, aio.UnaryUnaryClientInterceptor):
    pass


class _AioUnaryStream(_AioBearer, aio.UnaryStreamClientInterceptor):
    pass


class _AioStreamUnary(_AioBearer, aio.StreamUnaryClientInterceptor):
    pass


class _AioStreamStream(_AioBearer, aio.StreamStreamClientInterceptor):
    pass


_AIO_KINDS = (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)


def main() -> None:
    key = os.environ["MLSERVE_KEY"]
    plain, plain_aio = grpc.insecure_channel, aio.insecure_channel

    def insecure_channel(target: str, *args: Any, **kwargs: Any) -> grpc.Channel:
        return grpc.intercept_channel(plain(target, *args, **kwargs), _Bearer(key))

    def aio_insecure_channel(target: str, *args: Any, **kwargs: Any) -> aio.Channel:
        interceptors = [*(kwargs.pop("interceptors", None) or ())]
        interceptors.extend(kind(key) for kind in _AIO_KINDS)
        return plain_aio(target, *args, interceptors=interceptors, **kwargs)

    grpc.insecure_channel = insecure_channel  # type: ignore[assignment]
    aio.insecure_channel = aio_insecure_channel  # type: ignore[assignment]
    script, *args = sys.argv[1:]
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
