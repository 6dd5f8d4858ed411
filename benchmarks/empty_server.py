"""The baseline: a plain grpcio RuntimeService that answers with canned messages.

It uses crilab's generated stubs and the fake's server options (message limits,
thread pool) but has no interceptor, no state and no work: whatever the fake
costs beyond this is crilab's own overhead. Run it in its own process::

    python benchmarks/empty_server.py --listen tcp://127.0.0.1:0 [--containers FILE]

It prints its endpoint as its first stdout line (as ``crilab serve`` does) and
serves until SIGTERM or Ctrl-C. ``FILE`` holds a serialized
``ListContainersResponse``, the canned ListContainers answer.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path

import grpc

from crilab.endpoints import Endpoint, parse
from crilab.runtime import state as fake_state
from crilab.serving import SERVER_OPTIONS
from crilab.stubs import api_pb2, api_pb2_grpc

#: The fake's own default pool size (FakeRuntime(max_workers=32)).
MAX_WORKERS = 32


def canned_version() -> api_pb2.VersionResponse:
    """The fake's VersionResponse, field for field, so both messages have one size."""
    return api_pb2.VersionResponse(
        version=fake_state.KUBE_API_VERSION,
        runtime_name=fake_state.RUNTIME_NAME,
        runtime_version=fake_state.RUNTIME_VERSION,
        runtime_api_version=fake_state.RUNTIME_API_VERSION,
    )


class EmptyRuntime(api_pb2_grpc.RuntimeServiceServicer):
    """Version and ListContainers with canned answers; every other RPC UNIMPLEMENTED."""

    def __init__(self, containers: api_pb2.ListContainersResponse | None = None) -> None:
        self.version = canned_version()
        self.containers = containers or api_pb2.ListContainersResponse()

    def Version(self, request, context):
        return self.version

    def ListContainers(self, request, context):
        return self.containers


class EmptyServer:
    """An ``EmptyRuntime`` served on ``listen`` (unix:///path.sock or tcp://host:port)."""

    def __init__(
        self, listen: str, containers: api_pb2.ListContainersResponse | None = None
    ) -> None:
        self.servicer = EmptyRuntime(containers)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="empty"),
            options=list(SERVER_OPTIONS),
        )
        api_pb2_grpc.add_RuntimeServiceServicer_to_server(self.servicer, self._server)
        self.endpoint = _bind(self._server, parse(listen)).uri
        self._server.start()

    def stop(self, grace: float = 0.5) -> None:
        self._server.stop(grace).wait()

    def __enter__(self) -> EmptyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bind(server: grpc.Server, target: Endpoint) -> Endpoint:
    port = server.add_insecure_port(target.grpc_target)
    if target.is_unix:
        return target
    return Endpoint("tcp", host=target.host, port=port)


def load_containers(path: Path | None) -> api_pb2.ListContainersResponse | None:
    if path is None:
        return None
    return api_pb2.ListContainersResponse.FromString(path.read_bytes())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="unix:///path.sock or tcp://HOST:PORT")
    parser.add_argument("--containers", type=Path, help="a serialized ListContainersResponse")
    args = parser.parse_args(argv)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    server = EmptyServer(args.listen, load_containers(args.containers))
    print(server.endpoint, flush=True)
    while not done.wait(0.5):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
