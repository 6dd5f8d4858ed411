"""Section ``latency``: per-RPC p50/p99 of the fake against an empty grpcio servicer.

Both serve the same generated stubs with the same server options on the same
transport; the fake records every call (the default). Fake and baseline run in
alternating batches, so drift of a shared machine hits both alike. The verdict
is the p50 ratio fake/empty, target at most 1.10.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crilab
from crilab.builders import container_config, pod_config
from crilab.latency import Samples
from crilab.stubs import api_pb2

from .common import (
    BENCH_DIR,
    CALL_TIMEOUT,
    VERSION_REQUEST,
    Settings,
    crilab_serve,
    empty_serve,
    interleave,
    listen_address,
    open_channel,
    ratio,
    runtime_stub,
    scratch_dir,
    section_result,
    target,
)

P50_LIMIT = 1.10
CONTAINERS = 100
TRANSPORTS = ("unix", "tcp")
PLACEMENTS = ("in-process", "subprocess")
LIST_REQUEST = api_pb2.ListContainersRequest()

COLUMNS = [
    ("placement", "placement", ""),
    ("transport", "transport", ""),
    ("rpc", "RPC", ""),
    ("bytes", "reply bytes", "d"),
    ("fake_p50_ms", "fake p50 ms", ".3f"),
    ("empty_p50_ms", "empty p50 ms", ".3f"),
    ("ratio_p50", "p50 ratio", ".2f"),
    ("fake_p99_ms", "fake p99 ms", ".3f"),
    ("empty_p99_ms", "empty p99 ms", ".3f"),
    ("ratio_p99", "p99 ratio", ".2f"),
    ("pass", "p50 ≤ 1.10×", ""),
]


@dataclass
class Pair:
    """A fake and a baseline serving side by side, and how to fill and re-can them."""

    fake_endpoint: str
    empty_endpoint: str
    fill: Callable[[], None]  # put CONTAINERS containers into the fake
    recan: Callable[[api_pb2.ListContainersResponse], str]  # baseline answers these; endpoint


def _sys_path_for_empty_server() -> None:
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))


def fill_state(state: Any, log_root: Path) -> None:
    """CONTAINERS busybox containers in one pod, straight into a RuntimeState."""
    pod_id = state.run_pod_sandbox(pod_config("p", log_directory=str(log_root / "p")))
    for i in range(CONTAINERS):
        state.create_container(pod_id, container_config(f"c{i}", "busybox"))


def fill_over_grpc(endpoint: str, log_root: Path) -> None:
    """The same containers through the CRI, for a runtime in another process."""
    with crilab.connect(endpoint) as client:
        config = pod_config("p", log_directory=str(log_root / "p"))
        pod_id = client.run_pod_sandbox(config)
        for i in range(CONTAINERS):
            client.create_container(pod_id, container_config(f"c{i}", "busybox"), config)


@contextlib.contextmanager
def in_process_pair(transport: str, scratch: Path) -> Iterator[Pair]:
    """FakeRuntime and EmptyServer on background threads of this process."""
    _sys_path_for_empty_server()
    from empty_server import EmptyServer

    rt = crilab.FakeRuntime(listen_address(transport, scratch, "fake"), images=["busybox"])
    empty = EmptyServer(listen_address(transport, scratch, "empty"))

    def recan(containers: api_pb2.ListContainersResponse) -> str:
        empty.servicer.containers = containers
        return empty.endpoint

    try:
        yield Pair(rt.endpoint, empty.endpoint, lambda: fill_state(rt.state, scratch), recan)
    finally:
        empty.stop()
        rt.stop()


@contextlib.contextmanager
def subprocess_pair(transport: str, scratch: Path) -> Iterator[Pair]:
    """``crilab serve --preload busybox`` and ``empty_server.py``, each in its own process."""
    fake = crilab_serve(listen_address(transport, scratch, "fake"), preload=("busybox",))
    servers = [fake]
    try:
        servers.append(empty_serve(listen_address(transport, scratch, "empty")))

        def recan(containers: api_pb2.ListContainersResponse) -> str:
            canned = scratch / "containers.bin"
            canned.write_bytes(containers.SerializeToString())
            servers.pop().stop()
            servers.append(empty_serve(listen_address(transport, scratch, "empty2"), canned))
            return servers[-1].endpoint

        yield Pair(
            fake.endpoint,
            servers[1].endpoint,
            lambda: fill_over_grpc(fake.endpoint, scratch),
            recan,
        )
    finally:
        for server in servers:
            server.stop()


def compare(
    fake_endpoint: str, empty_endpoint: str, rpc: str, settings: Settings
) -> dict[str, Any]:
    """Interleave one RPC against both servers; the row of figures."""
    channels = [open_channel(fake_endpoint), open_channel(empty_endpoint)]
    try:
        calls = {
            name: _caller(rpc, ch) for name, ch in zip(("fake", "empty"), channels, strict=True)
        }
        got = interleave(
            calls,
            rounds=settings.pick(20, 4),
            batch=settings.pick(200, 40),
            warmup=settings.pick(100, 20),
        )
        size = _reply_bytes(rpc, channels)
    finally:
        for channel in channels:
            channel.close()
    return _row(rpc, got["fake"], got["empty"], size)


def _caller(rpc: str, channel: Any) -> Callable[[], object]:
    stub = runtime_stub(channel)
    if rpc == "Version":
        return lambda: stub.Version(VERSION_REQUEST, timeout=CALL_TIMEOUT)
    return lambda: stub.ListContainers(LIST_REQUEST, timeout=CALL_TIMEOUT)


def _reply_bytes(rpc: str, channels: list[Any]) -> int:
    """The reply's size, checked equal on both servers (else the comparison is unfair)."""
    sizes = {_caller(rpc, ch)().ByteSize() for ch in channels}
    if len(sizes) != 1:
        raise AssertionError(f"{rpc}: fake and baseline replies differ in size: {sizes}")
    return sizes.pop()


def _row(rpc: str, fake: Samples, empty: Samples, size: int) -> dict[str, Any]:
    errors = fake.error_count + empty.error_count
    if errors:
        raise RuntimeError(f"{rpc}: {fake.errors} (fake), {empty.errors} (empty)")
    r50 = ratio(fake.p50, empty.p50)
    return {
        "rpc": rpc,
        "bytes": size,
        "n": fake.count,
        "fake_p50_ms": fake.p50 * 1e3,
        "empty_p50_ms": empty.p50 * 1e3,
        "ratio_p50": r50,
        "fake_p99_ms": fake.p99 * 1e3,
        "empty_p99_ms": empty.p99 * 1e3,
        "ratio_p99": ratio(fake.p99, empty.p99),
        "pass": r50 <= P50_LIMIT,
    }


def measure_pair(placement: str, transport: str, settings: Settings) -> list[dict[str, Any]]:
    """Version and ListContainers (0 then 100 containers) on one placement and transport."""
    opener = in_process_pair if placement == "in-process" else subprocess_pair
    rows = []
    with scratch_dir() as scratch, opener(transport, scratch) as pair:
        rows.append(compare(pair.fake_endpoint, pair.empty_endpoint, "Version", settings))
        rows.append(compare(pair.fake_endpoint, pair.empty_endpoint, "ListContainers", settings))
        rows[-1]["rpc"] = "ListContainers (0)"
        pair.fill()
        with contextlib.closing(open_channel(pair.fake_endpoint)) as channel:
            canned = runtime_stub(channel).ListContainers(LIST_REQUEST, timeout=CALL_TIMEOUT)
        assert len(canned.containers) == CONTAINERS, len(canned.containers)
        empty_endpoint = pair.recan(canned)
        rows.append(compare(pair.fake_endpoint, empty_endpoint, "ListContainers", settings))
        rows[-1]["rpc"] = f"ListContainers ({CONTAINERS})"
    for row in rows:
        row.update(placement=placement, transport=transport)
    return rows


def run(settings: Settings) -> dict[str, Any]:
    rows = []
    for placement in PLACEMENTS:
        for transport in TRANSPORTS:
            print(f"  latency: {placement} over {transport} ...", flush=True)
            rows += measure_pair(placement, transport, settings)
    targets = [
        target(
            f"latency p50 fake/empty, {r['rpc']}, {r['placement']} {r['transport']}",
            r["ratio_p50"],
            P50_LIMIT,
            "×",
        )
        for r in rows
    ]
    n = rows[0]["n"] if rows else 0
    notes = [
        f"{n} calls per server and row, in alternating batches; recording on (history 10,000).",
        "in-process: both servers and the client share this benchmark's interpreter (one GIL);"
        " subprocess: `python -m crilab serve` vs `benchmarks/empty_server.py`.",
    ]
    return section_result(rows, COLUMNS, targets=targets, notes=notes)
