"""Limits: nothing a client sends or makes the runtime keep grows without bound.

Messages past 16 MiB are refused both ways with RESOURCE_EXHAUSTED (an oversize
answer with advice on what to do instead), the Stream* calls deliver any list in
chunks under the limit, and the call history, the event queues and the container
logs all stay bounded however long the runtime runs. Long calls (event streams,
blocking ExecSync and StopContainer) can hold at most part of the server's
threads, so short calls are always served.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crilab import FakeRuntime, serving
from crilab.builders import container_config, pod_config
from crilab.client import CHANNEL_OPTIONS
from crilab.runtime import instrument, processes
from crilab.runtime.events import DEFAULT_QUEUE
from crilab.serving import MAX_MESSAGE_BYTES
from crilab.stubs import api_pb2 as pb
from crilab.stubs import api_pb2_grpc

from .conftest import eventually

BUSYBOX = "localhost/crilab/busybox:local"
C = grpc.StatusCode

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", autouse=True)
def _temp_files_stay_in_pytest_tmp(tmp_path_factory) -> Iterator[None]:
    """The runtime's own files (socket, state root) and the builders' default log
    directory go below pytest's tmp, never into the system temp dir."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("tmp")))
        yield


@pytest.fixture
def rt() -> Iterator[FakeRuntime]:
    with FakeRuntime(images=[BUSYBOX], seed="limits") as runtime:
        yield runtime


class Stubs:
    """Stubs over a channel that can send more than 16 MiB (to see the server refuse it)
    and receives up to 16 MiB, as the kubelet does."""

    def __init__(self, rt: FakeRuntime) -> None:
        self.channel = grpc.insecure_channel(
            rt.endpoint.replace("unix://", "unix:", 1),
            # the first occurrence of an option wins: lift the client's own send limit
            options=[("grpc.max_send_message_length", 64 * 1024 * 1024), *CHANNEL_OPTIONS],
        )
        self.rs = api_pb2_grpc.RuntimeServiceStub(self.channel)

    def version_works(self) -> bool:
        return self.rs.Version(pb.VersionRequest(), timeout=5).runtime_api_version == "v1"


@pytest.fixture
def s(rt: FakeRuntime) -> Iterator[Stubs]:
    stubs = Stubs(rt)
    yield stubs
    stubs.channel.close()


# -- messages past 16 MiB ---------------------------------------------------------------


def test_a_request_over_16_mib_is_refused_and_the_server_keeps_serving(s: Stubs) -> None:
    just_under = pb.VersionRequest(version="x" * (MAX_MESSAGE_BYTES - 100))
    assert just_under.ByteSize() < MAX_MESSAGE_BYTES
    assert s.rs.Version(just_under, timeout=30).runtime_name == "crilab-fake"

    with pytest.raises(grpc.RpcError) as caught:
        s.rs.Version(pb.VersionRequest(version="x" * (MAX_MESSAGE_BYTES + 1)), timeout=30)
    assert caught.value.code() == C.RESOURCE_EXHAUSTED
    details = caught.value.details()  # the runtime's own check, with advice
    assert "16 MiB" in details and "kubelet" in details and "Send less" in details
    assert s.version_works()


def _fill(rt: FakeRuntime, tmp_path: Path, count: int, per_container: int) -> tuple[str, str]:
    """``count`` containers of about ``per_container`` bytes each in one pod (made through
    ``rt.state``: quicker than RPCs), and one small container in another pod."""
    state = rt.state
    logs = str(tmp_path / "logs")
    big = state.run_pod_sandbox(pod_config("big", log_directory=logs))
    small = state.run_pod_sandbox(pod_config("small", log_directory=logs))
    value = "v" * (per_container // 8)
    annotations = {f"note-{i}": value for i in range(8)}
    for i in range(count):
        cfg = container_config(f"c{i}", BUSYBOX, ["sleep", "infinity"], annotations=annotations)
        state.create_container(big, cfg)
    state.create_container(small, container_config("one", BUSYBOX, ["sleep", "infinity"]))
    return big, small


def test_an_answer_over_16_mib_says_what_to_do_and_streaming_delivers_it(
    rt: FakeRuntime, s: Stubs, tmp_path: Path
) -> None:
    # 20 KB a container: 1000 of them (one old-style Stream chunk) already pass 16 MiB
    count = 1000
    _, small = _fill(rt, tmp_path, count, per_container=20_000)

    with pytest.raises(grpc.RpcError) as caught:
        s.rs.ListContainers(pb.ListContainersRequest(), timeout=30)
    err = caught.value
    assert err.code() == C.RESOURCE_EXHAUSTED
    assert "StreamContainers" in err.details() and "filter" in err.details()
    assert "16 MiB" in err.details()
    # the runtime's stats of the same containers carry their annotations too
    with pytest.raises(grpc.RpcError) as caught:
        s.rs.ListContainerStats(pb.ListContainerStatsRequest(), timeout=30)
    assert caught.value.code() == C.RESOURCE_EXHAUSTED
    assert "StreamContainerStats" in caught.value.details()

    # what the message advises works: a filter ...
    only = s.rs.ListContainers(
        pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=small)), timeout=30
    )
    assert len(only.containers) == 1
    # ... or the stream, in chunks that each fit
    seen: list[str] = []
    for message in s.rs.StreamContainers(pb.StreamContainersRequest(), timeout=60):
        assert message.ByteSize() < MAX_MESSAGE_BYTES
        seen.extend(c.id for c in message.containers)
    assert len(seen) == len(set(seen)) == count + 1
    assert set(seen) == set(rt.state.containers)
    stats = sum(
        len(m.container_stats)
        for m in s.rs.StreamContainerStats(pb.StreamContainerStatsRequest(), timeout=60)
    )
    assert stats == count + 1
    assert s.version_works()
    codes = {c.method: c.code for c in rt.calls}
    assert codes["ListContainers"] == "OK"  # the filtered one, after the refused one
    assert codes["StreamContainers"] == "OK"


def test_exec_output_past_the_cap_still_fits_one_message(
    rt: FakeRuntime, s: Stubs, tmp_path: Path
) -> None:
    """ExecSync keeps at most MAX_EXEC_OUTPUT bytes of output and says so: that reply, note
    and framing included, must fit the 16 MiB limit, or grpc would refuse all of it."""
    pod = rt.state.run_pod_sandbox(pod_config("x", log_directory=str(tmp_path / "logs")))
    cid = rt.state.create_container(pod, container_config("c", BUSYBOX, ["sleep", "infinity"]))
    rt.state.start_container(cid)
    flood = ["sh", "-c", f"L={'z' * 16_000}; while true; do echo $L; done"]
    reply = s.rs.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=flood, timeout=10), timeout=30)
    assert reply.exit_code == 137
    assert len(reply.stdout) == processes.MAX_EXEC_OUTPUT
    assert b"truncated" in reply.stderr
    assert reply.ByteSize() <= MAX_MESSAGE_BYTES


# -- what the runtime keeps ---------------------------------------------------------------


def test_the_call_history_is_bounded_in_calls_and_bytes(tmp_path: Path) -> None:
    with FakeRuntime(history=50) as rt:
        stubs = Stubs(rt)
        huge = pb.VersionRequest(version="x" * (1024 * 1024))
        for _ in range(120):
            stubs.rs.Version(huge, timeout=10)
        calls = rt.calls
        assert len(calls) == 50  # the oldest are forgotten
        kept = 0
        for call in calls:
            if isinstance(call.request, str):  # too big to keep: only its size is
                assert "bytes, not kept" in call.request
            else:
                kept += call.request.ByteSize()
            if not isinstance(call.response, str):
                kept += call.response.ByteSize()
        assert kept <= 50 * 2 * instrument.KEEP_RESPONSE_BYTES
        assert all(c.method == "Version" and c.ok for c in calls)
        stubs.channel.close()


def test_event_queues_are_bounded_and_count_what_they_drop(rt: FakeRuntime, tmp_path: Path) -> None:
    state = rt.state
    stalled = state.events.subscribe()  # a subscriber that never reads
    # and a gRPC watcher that never reads either: neither may slow the runtime down
    stubs = Stubs(rt)
    watch = stubs.rs.GetContainerEvents(pb.GetEventsRequest())
    assert eventually(lambda: state.events.subscribers == 2)
    pod = state.run_pod_sandbox(pod_config("ev", log_directory=str(tmp_path / "logs")))
    t0 = time.monotonic()
    events = 0
    for i in range(700):  # created + deleted: 1400 events, past the 1024 of a queue
        cid = state.create_container(pod, container_config(f"c{i}", BUSYBOX, ["true"]))
        state.remove_container(cid)
        events += 2
    assert time.monotonic() - t0 < 30
    assert len(stalled._items) == DEFAULT_QUEUE
    assert stalled.dropped == events - DEFAULT_QUEUE
    # the queue keeps the newest: the last event is the last container's removal
    assert stalled._items[-1].container_event_type == pb.CONTAINER_DELETED_EVENT
    stalled.close()
    watch.cancel()
    assert eventually(lambda: state.events.subscribers == 0)
    stubs.channel.close()


def test_a_chatty_containers_log_is_rotated_and_stays_bounded(
    rt: FakeRuntime, s: Stubs, tmp_path: Path
) -> None:
    """A container that prints as fast as it can: its log rotates at the kubelet's default
    10 MiB, keeping one rotated file, so it never holds more than twice that."""
    bound = processes.DEFAULT_LOG_MAX_BYTES
    logs = tmp_path / "logs"
    pod = s.rs.RunPodSandbox(
        pb.RunPodSandboxRequest(config=pod_config("chatty", log_directory=str(logs))), timeout=10
    ).pod_sandbox_id
    line = "y" * 16_000  # just under the 16 KiB CRI log line, so one F record per echo
    cfg = container_config("spam", BUSYBOX, ["sh", "-c", f"L={line}; while true; do echo $L; done"])
    cid = s.rs.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=pod, config=cfg), timeout=10
    ).container_id
    s.rs.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=10)
    path = Path(
        s.rs.ContainerStatus(
            pb.ContainerStatusRequest(container_id=cid), timeout=10
        ).status.log_path
    )
    rotated = Path(f"{path}.1")
    rotations, last_rotated, peak = 0, None, 0
    deadline = time.monotonic() + 60
    while rotations < 3 and time.monotonic() < deadline:
        files = {p.name for p in path.parent.iterdir()}
        assert files and files <= {path.name, rotated.name}, files  # never a 0.log.2
        sizes = [p.stat().st_size for p in (path, rotated) if p.exists()]
        peak = max(peak, sum(sizes))
        assert all(size <= bound for size in sizes), sizes
        if rotated.exists():
            stamp = (rotated.stat().st_ino, rotated.stat().st_mtime_ns)
            if stamp != last_rotated:
                rotations, last_rotated = rotations + 1, stamp
        time.sleep(0.02)
    s.rs.StopContainer(pb.StopContainerRequest(container_id=cid), timeout=10)
    assert rotations >= 3, "the chatty container did not write 30 MiB within a minute"
    total = path.stat().st_size + rotated.stat().st_size
    assert peak <= 2 * bound and total <= 2 * bound
    assert rotated.stat().st_size > bound - 2 * len(line)  # rotated when (nearly) full
    # the records stay whole across the rotation: every line parses
    with open(rotated, "rb") as handle:
        head = handle.read(256 * 1024)
    records = processes.parse_cri_log(head[: head.rfind(b"\n") + 1])
    assert records and all(tag == "F" and text == line for _, _, tag, text in records)
    assert s.version_works()


def test_stop_and_exec_give_up_with_their_caller(rt: FakeRuntime, s: Stubs, tmp_path) -> None:
    """A grace period of a day or a command that never ends holds no server thread once
    the caller has gone: 40 such calls (more than the 32 workers), and none is still
    running on the server a moment after its deadline."""
    pod = s.rs.RunPodSandbox(
        pb.RunPodSandboxRequest(config=pod_config("p", log_directory=str(tmp_path / "l"))),
        timeout=10,
    ).pod_sandbox_id
    cfg = container_config("sh", BUSYBOX, ["sh", "-c", "while true; do sleep 1; done"])
    cid = s.rs.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=pod, config=cfg), timeout=10
    ).container_id
    s.rs.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=10)

    # count the state calls the servicer is inside of (this runtime's state only)
    lock = threading.Lock()
    running = {"now": 0, "started": 0}

    def counting(method):
        def call(*args, **kwargs):
            with lock:
                running["now"] += 1
                running["started"] += 1
            try:
                return method(*args, **kwargs)
            finally:
                with lock:
                    running["now"] -= 1

        return call

    rt.state.stop_container = counting(rt.state.stop_container)
    rt.state.exec_sync = counting(rt.state.exec_sync)
    futures = []
    for i in range(40):
        if i % 2:
            request = pb.StopContainerRequest(container_id=cid, timeout=86_400)
            futures.append(s.rs.StopContainer.future(request, timeout=0.3))
        else:
            request = pb.ExecSyncRequest(container_id=cid, cmd=["sleep", "infinity"])
            futures.append(s.rs.ExecSync.future(request, timeout=0.3))
    # past the long-call limit a call is refused at once, with advice; the rest run
    # until their caller gives up
    codes = [f.exception().code() for f in futures]
    assert set(codes) <= {C.DEADLINE_EXCEEDED, C.RESOURCE_EXHAUSTED}, codes
    assert codes.count(C.DEADLINE_EXCEEDED) >= 20
    assert running["started"] >= 20
    assert eventually(lambda: running["now"] == 0, within=2), running
    t0 = time.monotonic()
    assert s.version_works()
    assert time.monotonic() - t0 < 1.5
    status = s.rs.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=5)
    assert status.status.state == pb.CONTAINER_RUNNING  # as containerd: still running


# -- worker threads: long calls never starve short ones ---------------------------------


def _streams(rs: api_pb2_grpc.RuntimeServiceStub, count: int) -> list[Any]:
    return [rs.GetContainerEvents(pb.GetEventsRequest(), timeout=120) for _ in range(count)]


def test_long_calls_are_capped_so_short_calls_are_always_served(
    rt: FakeRuntime, s: Stubs, tmp_path: Path
) -> None:
    """As many event streams as the limit allows (crictl events, panels, leaked loops):
    the next long call is refused at once with advice, while Version and the health
    check are answered; once a stream closes, a new one is served again."""
    limit = serving.long_call_limit(32)
    assert 0 < limit < 32
    streams = _streams(s.rs, limit)
    try:
        assert eventually(lambda: rt.state.events.subscribers == limit), rt.state.events.subscribers
        with pytest.raises(grpc.RpcError) as caught:
            next(s.rs.GetContainerEvents(pb.GetEventsRequest(), timeout=10))
        err = caught.value
        assert err.code() == C.RESOURCE_EXHAUSTED
        details = err.details()
        assert f"{limit} long calls are open" in details
        assert f"{limit} GetContainerEvents" in details and "crictl events" in details
        assert "32 worker threads" in details
        # a blocking ExecSync shares the limit: refused too, not left waiting
        pod = rt.state.run_pod_sandbox(pod_config("p", log_directory=str(tmp_path / "l")))
        cid = rt.state.create_container(pod, container_config("c", BUSYBOX, ["sleep", "1d"]))
        rt.state.start_container(cid)
        with pytest.raises(grpc.RpcError) as caught:
            s.rs.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["sleep", "9"]), timeout=10)
        assert caught.value.code() == C.RESOURCE_EXHAUSTED
        assert "GetContainerEvents" in caught.value.details()
        # short calls: answered (a hang would end in DEADLINE_EXCEEDED after 5 s)
        health = health_pb2_grpc.HealthStub(s.channel)
        for _ in range(20):
            assert s.version_works()
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert s.rs.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=5)
        refused = [c for c in rt.calls if c.code == "RESOURCE_EXHAUSTED"]
        assert [c.method for c in refused] == ["GetContainerEvents", "ExecSync"]
        assert all("worker threads" in c.details for c in refused)
        # close one: a new stream is admitted and gets events
        streams.pop().cancel()
        assert eventually(lambda: rt.state.events.subscribers == limit - 1)
        assert eventually(lambda: rt._server.gate.running == limit - 1)
        fresh = s.rs.GetContainerEvents(pb.GetEventsRequest(), timeout=30)
        streams.append(fresh)
        assert eventually(lambda: rt.state.events.subscribers == limit)
        rt.state.stop_container(cid, 0)
        event = next(fresh)
        assert event.container_id == cid
        assert event.container_event_type == pb.CONTAINER_STOPPED_EVENT
    finally:
        for stream in streams:
            stream.cancel()
    assert eventually(lambda: rt._server.gate.running == 0)
    assert eventually(lambda: rt.state.events.subscribers == 0)


def test_a_full_server_refuses_at_once_instead_of_queueing(tmp_path: Path) -> None:
    """Every worker busy (here: an injected latency) and the queue full: the next call is
    refused at once with RESOURCE_EXHAUSTED, not left waiting for its deadline."""
    with FakeRuntime(max_workers=4) as small:
        stubs = Stubs(small)
        small.inject_latency(1.0, method="Version")
        futures = [stubs.rs.Version.future(pb.VersionRequest(), timeout=60) for _ in range(12)]
        codes = [f.code() for f in futures]
        refused = [f for f in futures if f.code() == C.RESOURCE_EXHAUSTED]
        assert refused, codes  # 4 running + 4 queued at most: the rest refused
        assert all("Concurrent RPC limit" in f.details() for f in refused)
        assert set(codes) == {C.OK, C.RESOURCE_EXHAUSTED}
        small.clear_faults()
        assert stubs.version_works()
        stubs.channel.close()


def test_every_answer_and_stream_message_over_16_mib_is_refused_with_advice(
    rt: FakeRuntime, s: Stubs, tmp_path: Path
) -> None:
    """Not only the List calls: a pod with 9 MiB of annotations and a container with as
    much make a PodSandboxStatus, a PodSandboxStats and a container event over 16 MiB.
    Each is refused with RESOURCE_EXHAUSTED that says why (recorded so, not as OK), and
    a single item no message can carry is named, instead of advising a stream that
    cannot carry it either."""
    annotations = {f"k{i}": "v" * (1 << 20) for i in range(9)}
    logs = str(tmp_path / "logs")
    pod = rt.state.run_pod_sandbox(pod_config("fat", log_directory=logs, annotations=annotations))
    cfg = container_config("c", BUSYBOX, ["sleep", "infinity"], annotations=annotations)
    rt.state.create_container(pod, cfg)
    rt.clear_calls()

    def refused(call, request) -> str:
        with pytest.raises(grpc.RpcError) as caught:
            result = call(request, timeout=60)
            for _ in result if not hasattr(result, "ByteSize") else ():
                pass
        assert caught.value.code() == C.RESOURCE_EXHAUSTED, caught.value.details()
        details = caught.value.details()
        assert "16 MiB" in details and "annotations" in details
        assert "Sent message larger than max (" not in details  # not grpc's bare one
        return details

    status = refused(s.rs.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id=pod))
    assert "the PodSandboxStatus answer would be" in status and "256 KiB" in status
    stats = refused(s.rs.PodSandboxStats, pb.PodSandboxStatsRequest(pod_sandbox_id=pod))
    assert "the PodSandboxStats answer would be" in stats
    # the list: not "call StreamPodSandboxStats", since its one item is over the limit too
    listed = refused(s.rs.ListPodSandboxStats, pb.ListPodSandboxStatsRequest())
    streamed = refused(s.rs.StreamPodSandboxStats, pb.StreamPodSandboxStatsRequest())
    for details in (listed, streamed):
        assert f"PodSandboxStats {pod[:13]}" in details and "by itself" in details
        assert "StreamPodSandboxStats cannot send it either" in details

    # a container event carries its pod's status: trimmed to fit, the stream goes on
    events = s.rs.GetContainerEvents(pb.GetEventsRequest(), timeout=60)
    assert eventually(lambda: rt.state.events.subscribers == 1)
    cid = rt.state.create_container(pod, container_config("d", BUSYBOX, ["true"]))
    event = next(events)
    assert event.container_id == cid and event.ByteSize() < 16 * 1024 * 1024
    assert "crilab.event-trimmed" in event.pod_sandbox_status.annotations
    events.cancel()

    assert s.version_works()
    recorded = {c.method: c.code for c in rt.calls}
    for method in (
        "PodSandboxStatus",
        "PodSandboxStats",
        "ListPodSandboxStats",
        "StreamPodSandboxStats",
    ):
        assert recorded[method] == "RESOURCE_EXHAUSTED", (method, recorded)
    # and a small pod beside the fat one is answered as always
    small = rt.state.run_pod_sandbox(pod_config("small", log_directory=logs))
    reply = s.rs.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=small), timeout=10)
    assert reply.status.id == small


def test_every_stream_sizes_its_messages_where_it_builds_them() -> None:
    """``_translating`` sizes unary answers only: a stream must size its own messages."""
    import inspect

    from crilab.runtime.servicer import ImageServicer, RuntimeServicer

    streams = [
        (name, method)
        for servicer in (RuntimeServicer, ImageServicer)
        for name, method in vars(servicer).items()
        if name[:1].isupper() and inspect.isgeneratorfunction(inspect.unwrap(method))
    ]
    assert len(streams) == 7, [name for name, _ in streams]  # 6 Stream* + GetContainerEvents
    for name, method in streams:
        assert getattr(method, "_sized_when_built", False), f"{name} sizes nothing"
