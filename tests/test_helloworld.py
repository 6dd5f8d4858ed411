"""The Greeter over real channels: unary, server streaming, bidi; unix socket and TCP."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

import grpc
import pytest

from crilab import helloworld
from crilab.endpoints import EndpointError
from crilab.stubs import helloworld_pb2, helloworld_pb2_grpc


@pytest.fixture(params=["unix", "tcp"])
def server(request) -> Iterator[helloworld.GrpcServer]:
    listen = None if request.param == "unix" else "tcp://127.0.0.1:0"
    with helloworld.serve(listen) as srv:
        yield srv


def test_unary(server) -> None:
    assert helloworld.say_hello(server.endpoint.uri, "Ada") == "Hello, Ada!"


def test_server_streaming(server) -> None:
    assert helloworld.say_hello_stream(server.endpoint.uri, "Bo") == [
        "Hello #1, Bo!",
        "Hello #2, Bo!",
        "Hello #3, Bo!",
    ]


def test_bidirectional_streaming(server) -> None:
    names = ["a", "b", "c", "d"]
    assert helloworld.say_hello_bidi(server.endpoint.uri, names) == [f"Hello, {n}!" for n in names]


def test_empty_name_is_invalid_argument_with_a_hint(server) -> None:
    with helloworld.channel(server.endpoint.uri) as ch, pytest.raises(grpc.RpcError) as err:
        helloworld_pb2_grpc.GreeterStub(ch).SayHello(helloworld_pb2.HelloRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "set name" in err.value.details()
    assert helloworld.say_hello(server.endpoint.uri, "still") == "Hello, still!"


def test_private_socket_is_0600_in_a_0700_directory() -> None:
    with helloworld.serve() as srv:
        path = srv.endpoint.path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert not os.path.exists(path)
    assert not os.path.exists(os.path.dirname(path))


def test_two_tcp_servers_never_share_a_port() -> None:
    with helloworld.serve("tcp://127.0.0.1:0") as one, helloworld.serve("tcp://127.0.0.1:0") as two:
        assert one.endpoint.port != two.endpoint.port
        with pytest.raises(EndpointError, match="port"):
            helloworld.serve(f"tcp://127.0.0.1:{one.endpoint.port}")


def test_rerunning_on_the_same_socket_path_works(tmp_path) -> None:
    listen = f"unix://{tmp_path}/hello.sock"
    first = helloworld.serve(listen)
    with pytest.raises(EndpointError, match="already serving"):
        helloworld.serve(listen)
    first.stop()
    with helloworld.serve(listen) as again:
        assert helloworld.say_hello(again.endpoint.uri, "x") == "Hello, x!"


def test_too_long_socket_path_is_refused_with_the_limit() -> None:
    with pytest.raises(EndpointError, match="at most 107"):
        helloworld.serve("unix:///tmp/" + "x" * 120 + ".sock")


def test_a_request_over_16_mib_is_refused_before_the_handler(server) -> None:
    """Only the fake runtime raises grpc's receive limit (to refuse oversize requests itself,
    with advice); the Greeter keeps the 16 MiB limit both ways."""
    from crilab.serving import MAX_MESSAGE_BYTES

    options = [("grpc.max_send_message_length", 32 * 1024 * 1024)]
    with grpc.insecure_channel(server.endpoint.grpc_target, options=options) as ch:
        stub = helloworld_pb2_grpc.GreeterStub(ch)
        big = helloworld_pb2.HelloRequest(name="x" * (MAX_MESSAGE_BYTES + 1))
        with pytest.raises(grpc.RpcError) as caught:
            stub.SayHello(big, timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Received message larger than max" in caught.value.details()
        assert stub.SayHello(helloworld_pb2.HelloRequest(name="Ada"), timeout=10).message
