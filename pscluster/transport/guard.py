"""Undecodable requests answered INVALID_ARGUMENT, not INTERNAL.

When a request deserializer raises, grpc-python logs a traceback and answers INTERNAL
("Exception deserializing request!"): the caller cannot tell its own garbage from a server bug,
and a fuzzer or a buggy client fills the log. :class:`DecodeGuard` wraps each handler's
deserializer (the generated ``FromString`` or the shard's framing parser alike) so that a
failure becomes an :class:`Undecodable` marker, and the handler so that meeting a marker -- the
request of a unary call, or any message of a request stream -- aborts the call with
INVALID_ARGUMENT naming the message type that was expected.

A marker met inside a request stream is raised as :class:`~pscluster.errors.
InvalidArgument` from the iterator the servicer reads, so ``@grpc_errors`` maps it like any
other bad input and the servicer never acts on a stream it could not read in full; whatever the
servicer does with it, the guard has the last word on the status.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import descriptor_pool

from pscluster.errors import InvalidArgument

Deserializer = Callable[[bytes], Any]
if TYPE_CHECKING:  # grpc-stubs makes these generic; at runtime they are plain classes
    Handler = grpc.RpcMethodHandler[Any, Any]
    Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    Interceptor = grpc.ServerInterceptor
Continuation = Callable[[grpc.HandlerCallDetails], "Handler | None"]


@dataclass(frozen=True)
class Undecodable:
    """What a guarded deserializer returns for bytes it cannot parse (never None: gRPC reads
    None from a deserializer as its own failure)."""

    message: str  # the expected message type, e.g. "PushChunk"
    error: str

    def describe(self) -> str:
        return f"request is not a valid {self.message}: {self.error}"


class DecodeGuard(Interceptor):
    """A server interceptor: undecodable requests get INVALID_ARGUMENT and reach no servicer.

    The guarded handler of a method is built once and kept: a coordinator serving hundreds
    of workers answers a thousand calls a second, and rebuilding handlers per call (with a
    descriptor-pool lookup) was a measurable share of its CPU.
    """

    def __init__(self) -> None:
        self._cache: dict[str, tuple[Handler, Handler]] = {}

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler  # unknown method, or raw bytes: nothing can fail to decode
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        name = _input_type_name(method, handler.request_deserializer)
        guarded = _guarded(handler, _guard_deserializer(handler.request_deserializer, name))
        self._cache[method] = (handler, guarded)
        return guarded


def _guard_deserializer(deserialize: Deserializer, message: str) -> Deserializer:
    def guarded(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as e:  # DecodeError, or whatever a custom parser raises on garbage
            return Undecodable(message, f"{type(e).__name__}: {e}")

    return guarded


def _guarded(handler: Handler, deserialize: Deserializer) -> Handler:
    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _unary(handler.unary_unary), deserialize, serialize
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _unary(handler.unary_stream), deserialize, serialize
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _streaming(handler.stream_unary, stream_reply=False), deserialize, serialize
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _streaming(handler.stream_stream, stream_reply=True), deserialize, serialize
        )
    return handler  # no behaviour at all: gRPC reports that itself


def _unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.describe())
        return behaviour(request, context)

    return guarded


class _Requests:
    """The request stream as the servicer reads it: a marker raises InvalidArgument and is
    remembered, so the guard can insist on the status whatever the servicer made of it."""

    def __init__(self, requests: Iterator[Any]) -> None:
        self._requests = requests
        self.failure: Undecodable | None = None

    def __iter__(self) -> _Requests:
        return self

    def __next__(self) -> Any:
        if self.failure is not None:
            raise InvalidArgument(self.failure.describe())
        request = next(self._requests)
        if isinstance(request, Undecodable):
            self.failure = request
            raise InvalidArgument(request.describe())
        return request

    def insist(self, context: grpc.ServicerContext) -> None:
        if self.failure is not None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, self.failure.describe())


def _streaming(behaviour: Callable[..., Any], *, stream_reply: bool) -> Callable[..., Any]:
    def guarded(request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        requests = _Requests(request_iterator)
        try:
            result = behaviour(requests, context)
        except Exception:
            requests.insist(context)
            raise
        # A servicer that swallowed the error and answered anyway is overruled.
        requests.insist(context)
        return _replies(result, requests, context) if stream_reply else result

    return guarded


def _replies(result: Iterator[Any], requests: _Requests, context: grpc.ServicerContext) -> Any:
    """A bidi handler reads requests while its replies are taken: guard that loop as well."""
    try:
        yield from result
    except Exception:
        requests.insist(context)
        raise
    requests.insist(context)


def _input_type_name(method: str, deserialize: Deserializer) -> str:
    """The request message's name, e.g. "PushChunk" for "/pscluster.v1.ParameterServer/Push".

    Read from the descriptor pool, because custom deserializers (the shard's framing parser)
    do not say which message they parse; the deserializer's own class is the fallback.
    """
    service, _, rpc = method.lstrip("/").rpartition("/")
    try:
        found = descriptor_pool.Default().FindServiceByName(service).FindMethodByName(rpc)
        if found is not None:
            return str(found.input_type.name)
    except KeyError:
        pass
    descriptor = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    return str(getattr(descriptor, "name", "request message"))
