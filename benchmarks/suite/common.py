"""What every section shares: settings, channels, server processes, timing, tables.

Every figure a section reports as a verdict is a ratio measured in one run
(the thing under test against its baseline, interleaved), because the machine
is shared and noisy; absolute numbers are printed for context only.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from crilab.client import CHANNEL_OPTIONS
from crilab.endpoints import parse
from crilab.latency import Samples, measure
from crilab.stubs import api_pb2, api_pb2_grpc

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = BENCH_DIR.parent
VERSION_REQUEST = api_pb2.VersionRequest(version="v1")
CALL_TIMEOUT = 30.0

#: A column of a table: result key, header, format spec ("" for str()).
Column = tuple[str, str, str]


@dataclass(frozen=True)
class Settings:
    """How much work a run does: ``quick`` is a smoke run of about a minute."""

    quick: bool = False

    def pick(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full


def section_result(
    rows: list[dict[str, Any]],
    columns: Sequence[Column],
    *,
    targets: Sequence[dict[str, Any]] = (),
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The JSON shape of one section's outcome."""
    return {
        "columns": [list(c) for c in columns],
        "rows": rows,
        "targets": list(targets),
        "notes": list(notes),
    }


def target(name: str, value: float, limit: float, unit: str) -> dict[str, Any]:
    """A PASS/FAIL verdict: ``value`` must be at most ``limit``; NaN means not judged."""
    ok = None if math.isnan(value) else value <= limit
    return {"name": name, "value": value, "limit": limit, "unit": unit, "pass": ok}


# -- channels --------------------------------------------------------------------


def open_channel(endpoint: str, *, private: bool = False) -> grpc.Channel:
    """A ready channel with the crilab client's options; ``private``: its own connection."""
    options = list(CHANNEL_OPTIONS)
    if private:  # grpc otherwise shares one connection among identical channels
        options.append(("grpc.use_local_subchannel_pool", 1))
    channel = grpc.insecure_channel(parse(endpoint).grpc_target, options=options)
    grpc.channel_ready_future(channel).result(timeout=10)
    return channel


def runtime_stub(channel: grpc.Channel) -> api_pb2_grpc.RuntimeServiceStub:
    return api_pb2_grpc.RuntimeServiceStub(channel)


class PerThreadStubs:
    """Version calls where each calling thread has its own channel (its own connection)."""

    def __init__(self, endpoint: str, count: int) -> None:
        self.channels = [open_channel(endpoint, private=True) for _ in range(count)]
        self._stubs = [runtime_stub(c) for c in self.channels]
        self._local = threading.local()
        self._next = itertools.count()

    def version(self) -> None:
        stub = getattr(self._local, "stub", None)
        if stub is None:
            stub = self._local.stub = self._stubs[next(self._next) % len(self._stubs)]
        stub.Version(VERSION_REQUEST, timeout=CALL_TIMEOUT)

    def warm_up(self, calls: int = 20) -> None:
        for stub in self._stubs:
            for _ in range(calls):
                stub.Version(VERSION_REQUEST, timeout=CALL_TIMEOUT)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


# -- servers in their own process ---------------------------------------------------


class ServerProcess:
    """A server started as ``argv`` that prints its endpoint as its first stdout line."""

    def __init__(self, argv: Sequence[str], *, startup_timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            cwd=REPO_DIR,
            text=True,
        )
        try:
            self.endpoint = self._first_line(startup_timeout)
        except BaseException:
            self.stop()
            raise

    def _first_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().strip() if ready else ""
        if not line:
            raise RuntimeError(f"{self.proc.args!r} printed no endpoint within {timeout:g}s")
        return line

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def crilab_serve(listen: str, preload: Sequence[str] = ()) -> ServerProcess:
    """``crilab serve`` in its own process (as ``python -m crilab``)."""
    argv = [sys.executable, "-m", "crilab", "serve", "--listen", listen, "--quiet"]
    for image in preload:
        argv += ["--preload", image]
    return ServerProcess(argv)


def empty_serve(listen: str, containers: Path | None = None) -> ServerProcess:
    """``benchmarks/empty_server.py`` in its own process."""
    argv = [sys.executable, str(BENCH_DIR / "empty_server.py"), "--listen", listen]
    if containers is not None:
        argv += ["--containers", str(containers)]
    return ServerProcess(argv)


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A private short directory for sockets and logs, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="crilab-bench-") as path:
        yield Path(path)


def listen_address(transport: str, directory: Path, name: str) -> str:
    """Where a server should listen: a socket in ``directory`` or a free TCP port."""
    if transport == "unix":
        return f"unix://{directory / name}.sock"
    return "tcp://127.0.0.1:0"


def rss_mib(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


# -- timing ----------------------------------------------------------------------


def interleave(
    calls: dict[str, Callable[[], object]],
    *,
    rounds: int,
    batch: int,
    concurrency: int = 1,
    warmup: int = 50,
) -> dict[str, Samples]:
    """Measure each call in alternating batches so drift hits all of them alike.

    The order flips every round (A B, B A, ...). Returns one ``Samples`` per name
    with every batch's latencies; ``wall`` is the sum of the batches' wall times.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    merged = {name: Samples(label=name, concurrency=concurrency) for name in calls}
    names = list(calls)
    for index in range(rounds):
        for name in names if index % 2 == 0 else reversed(names):
            got = measure(calls[name], n=batch, concurrency=concurrency, warmup=0, label=name)
            _merge(merged[name], got)
    return merged


def _merge(into: Samples, got: Samples) -> None:
    into.latencies.extend(got.latencies)
    into.wall += got.wall
    for code, count in got.errors.items():
        into.errors[code] = into.errors.get(code, 0) + count


def time_call(fn: Callable[[], object], reps: int) -> float:
    """Median seconds of ``fn()`` over ``reps`` runs (after one untimed run)."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


# -- tables ----------------------------------------------------------------------


def format_cell(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "PASS" if value else "FAIL"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return format(value, spec or ".3g")
    return format(value, spec) if spec and isinstance(value, int) else str(value)


def columns_for(rows: Sequence[dict[str, Any]]) -> list[Column]:
    """Columns for rows whose shape is not known in advance (their keys, in order)."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    return [(k, k, "") for k in keys]


def text_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """A plain aligned table for the terminal."""
    header = [h for _, h, _ in columns]
    body = [[format_cell(row.get(k), spec) for k, _, spec in columns] for row in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """The same table in Markdown, for the README."""
    header = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = [
        "| " + " | ".join(format_cell(row.get(k), spec) for k, _, spec in columns) + " |"
        for row in rows
    ]
    return "\n".join([header, rule, *body])


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else the platform's guess."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or "unknown"


def nproc() -> int:
    """CPUs this process may run on (what ``nproc`` prints)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
