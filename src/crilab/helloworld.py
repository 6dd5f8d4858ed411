"""The grpc helloworld ``Greeter``: a server and a client for the three call shapes.

Notebook 02 starts ``serve()`` in the kernel and calls it with ``say_hello``,
``say_hello_stream`` and ``say_hello_bidi``. The server is a real gRPC server
on a unix socket (private by default) or on TCP, on a background thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import grpc

from .serving import GrpcServer
from .stubs import helloworld_pb2, helloworld_pb2_grpc

__all__ = ["Greeter", "channel", "say_hello", "say_hello_bidi", "say_hello_stream", "serve"]


class Greeter(helloworld_pb2_grpc.GreeterServicer):
    """The servicer: one method per RPC in ``helloworld.proto``."""

    def __init__(self, greeting: str = "Hello", replies: int = 3) -> None:
        self.greeting = greeting
        self.replies = replies

    def SayHello(self, request, context):
        if not request.name:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "HelloRequest.name is empty: set name, e.g. HelloRequest(name='Ada')",
            )
        return helloworld_pb2.HelloReply(message=f"{self.greeting}, {request.name}!")

    def SayHelloStreamReply(self, request, context):
        for i in range(self.replies):
            if not context.is_active():
                return
            yield helloworld_pb2.HelloReply(message=f"{self.greeting} #{i + 1}, {request.name}!")

    def SayHelloBidiStream(self, request_iterator, context):
        for request in request_iterator:
            yield helloworld_pb2.HelloReply(message=f"{self.greeting}, {request.name}!")


def serve(listen: str | None = None, *, greeting: str = "Hello", replies: int = 3) -> GrpcServer:
    """Start a Greeter server; ``listen=None`` means a private unix socket."""
    servicer = Greeter(greeting, replies)
    return GrpcServer(
        lambda server: helloworld_pb2_grpc.add_GreeterServicer_to_server(servicer, server),
        listen,
        max_workers=8,
        socket_name="hello.sock",
    )


def channel(endpoint: str) -> grpc.Channel:
    """An insecure channel to ``unix:///path`` or ``tcp://host:port``."""
    from .endpoints import parse

    return grpc.insecure_channel(parse(endpoint).grpc_target)


def say_hello(endpoint: str, name: str, timeout: float = 5.0) -> str:
    """Unary: one request, one reply."""
    with channel(endpoint) as ch:
        reply = helloworld_pb2_grpc.GreeterStub(ch).SayHello(
            helloworld_pb2.HelloRequest(name=name), timeout=timeout
        )
    return reply.message


def say_hello_stream(endpoint: str, name: str, timeout: float = 5.0) -> list[str]:
    """Server streaming: one request, a stream of replies."""
    with channel(endpoint) as ch:
        stub = helloworld_pb2_grpc.GreeterStub(ch)
        stream = stub.SayHelloStreamReply(helloworld_pb2.HelloRequest(name=name), timeout=timeout)
        return [reply.message for reply in stream]


def say_hello_bidi(endpoint: str, names: Iterable[str], timeout: float = 5.0) -> list[str]:
    """Bidirectional streaming: send every name, collect every reply."""

    def requests() -> Iterator[helloworld_pb2.HelloRequest]:
        for name in names:
            yield helloworld_pb2.HelloRequest(name=name)

    with channel(endpoint) as ch:
        stub = helloworld_pb2_grpc.GreeterStub(ch)
        return [reply.message for reply in stub.SayHelloBidiStream(requests(), timeout=timeout)]
