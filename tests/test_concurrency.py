"""Many clients at once: 16 threads, each with its own channel, run whole lifecycles.

Run a pod, create two containers, start them, exec in one, stop, remove, stop
the pod, remove it: over and over, all at the same time, while event
subscribers watch. Every call must answer OK, nothing may deadlock, and at the
end the runtime must be empty: no pods, no containers, no index entries, no
name reservations, no subscriber left behind.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crilab import FakeRuntime
from crilab.builders import container_config, pod_config
from crilab.stubs import api_pb2 as pb
from crilab.stubs import api_pb2_grpc

from .conftest import eventually

BUSYBOX = "localhost/crilab/busybox:local"
THREADS = 16
LIFECYCLES = 25  # per thread
SUBSCRIBERS = 4
TIMEOUT = 10.0  # every call's deadline
EVENT_ORDER = {
    pb.CONTAINER_CREATED_EVENT: 0,
    pb.CONTAINER_STARTED_EVENT: 1,
    pb.CONTAINER_STOPPED_EVENT: 2,
    pb.CONTAINER_DELETED_EVENT: 3,
}

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
    with FakeRuntime(images=[BUSYBOX], seed="concurrency", history=100_000) as runtime:
        yield runtime


def _channel(rt: FakeRuntime) -> grpc.Channel:
    return grpc.insecure_channel(rt.endpoint.replace("unix://", "unix:", 1))


def _lifecycles(rt: FakeRuntime, worker: int, logs: Path, failures: list[str]) -> None:
    """LIFECYCLES full pod lifecycles over this thread's own channel."""
    channel = _channel(rt)
    rs = api_pb2_grpc.RuntimeServiceStub(channel)
    try:
        for n in range(LIFECYCLES):
            labels = {"worker": str(worker), "lifecycle": str(n)}
            cfg = pod_config(f"w{worker}-{n}", labels=labels, log_directory=str(logs))
            pod = rs.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=TIMEOUT)
            pod_id = pod.pod_sandbox_id
            ctrs = []
            for name, command in (
                ("app", ["sleep", "infinity"]),
                ("side", ["sh", "-c", "while true; do echo tick; sleep 0.05; done"]),
            ):
                ccfg = container_config(name, BUSYBOX, command, labels={**labels, "c": name})
                request = pb.CreateContainerRequest(
                    pod_sandbox_id=pod_id, config=ccfg, sandbox_config=cfg
                )
                ctrs.append(rs.CreateContainer(request, timeout=TIMEOUT).container_id)
            for cid in ctrs:
                rs.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=TIMEOUT)
            mine = rs.ListContainers(
                pb.ListContainersRequest(filter=pb.ContainerFilter(label_selector=labels)),
                timeout=TIMEOUT,
            ).containers
            if sorted(c.id for c in mine) != sorted(ctrs):
                failures.append(f"worker {worker}: ListContainers by label saw {len(mine)}")
            reply = rs.ExecSync(
                pb.ExecSyncRequest(container_id=ctrs[0], cmd=["echo", f"w{worker}"], timeout=5),
                timeout=TIMEOUT + 5,
            )
            if reply.stdout != f"w{worker}\n".encode() or reply.exit_code != 0:
                failures.append(f"worker {worker}: exec answered {reply}")
            for cid in ctrs:
                rs.StopContainer(pb.StopContainerRequest(container_id=cid), timeout=TIMEOUT)
            for cid in ctrs:
                rs.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=TIMEOUT)
            rs.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)
            rs.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)
    except grpc.RpcError as err:
        failures.append(f"worker {worker}: {err.code().name}: {err.details()}")
    except Exception as exc:  # reported, not lost in the thread
        failures.append(f"worker {worker}: {type(exc).__name__}: {exc}")
    finally:
        channel.close()


class Watcher:
    """A GetContainerEvents subscriber on its own channel, reading until cancelled."""

    def __init__(self, rt: FakeRuntime) -> None:
        self.channel = _channel(rt)
        stub = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.call = stub.GetContainerEvents(pb.GetEventsRequest())
        self.events: list[pb.ContainerEventResponse] = []
        self.error: grpc.RpcError | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.call:
                self.events.append(event)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                self.error = err

    def stop(self) -> None:
        self.call.cancel()
        self.thread.join(timeout=10)
        self.channel.close()


def test_many_clients_run_whole_lifecycles_at_once(rt: FakeRuntime, tmp_path: Path) -> None:
    watchers = [Watcher(rt) for _ in range(SUBSCRIBERS)]
    assert eventually(lambda: rt.state.events.subscribers == SUBSCRIBERS)
    subs = list(rt.state.events._subs)  # the server side of the watchers, for their drop counts
    failures: list[str] = []
    workers = [
        threading.Thread(target=_lifecycles, args=(rt, w, tmp_path / "logs", failures))
        for w in range(THREADS)
    ]
    t0 = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=100)
    elapsed = time.monotonic() - t0
    assert not any(w.is_alive() for w in workers), "a worker is stuck: deadlock?"
    assert failures == []

    # every call the runtime saw answered OK (the event streams end CANCELLED below)
    calls = [c for c in rt.calls if c.method != "GetContainerEvents"]
    per_lifecycle = 1 + 2 + 2 + 1 + 1 + 2 + 2 + 1 + 1
    assert len(calls) == THREADS * LIFECYCLES * per_lifecycle
    assert Counter(c.code for c in calls) == {"OK": len(calls)}

    # the runtime is empty again, down to its indexes and reservations
    state = rt.state
    assert state.check_invariants() == []
    with state.locked():
        assert state.pods == {} and state.containers == {}
        assert len(state._pod_ids) == 0 and len(state._ctr_ids) == 0
        for index in (state._pod_index, state._ctr_index):
            assert all(not ids for ids in index.by_state.values())
            assert index.by_label == {}
        assert state._pod_names == {} and state._ctr_names == {}

    # The watchers saw the lifecycles, each container's events in order. A reader slower
    # than 16 busy clients loses the oldest events of its bounded queue (events.py's
    # policy): what it got plus what its queue dropped is every event, no more, no less.
    expected = THREADS * LIFECYCLES * 2 * len(EVENT_ORDER)

    def accounted() -> int:
        return sum(len(w.events) for w in watchers) + sum(sub.dropped for sub in subs)

    assert eventually(lambda: accounted() >= SUBSCRIBERS * expected, within=20)
    time.sleep(0.2)
    assert accounted() == SUBSCRIBERS * expected
    for watcher in watchers:
        watcher.stop()
        assert watcher.error is None
        last: dict[str, int] = defaultdict(lambda: -1)
        for event in watcher.events:
            rank = EVENT_ORDER[event.container_event_type]
            assert rank > last[event.container_id], "events of a container out of order"
            last[event.container_id] = rank
        assert len(last) >= THREADS * LIFECYCLES * 2 * 0.5  # most containers were seen
    assert eventually(lambda: rt.state.events.subscribers == 0), "a subscriber was left behind"
    assert rt.running
    print(f"{len(calls)} calls from {THREADS} clients in {elapsed:.1f}s")


def test_subscribers_come_and_go_while_lifecycles_run(rt: FakeRuntime, tmp_path: Path) -> None:
    """Subscribing and cancelling in a loop, during the lifecycles: no deadlock, no leak."""
    failures: list[str] = []
    workers = [
        threading.Thread(target=_lifecycles, args=(rt, w, tmp_path / "logs", failures))
        for w in range(THREADS // 2)
    ]
    for worker in workers:
        worker.start()
    churned = 0
    while any(w.is_alive() for w in workers):
        watcher = Watcher(rt)
        time.sleep(0.05)
        watcher.stop()
        assert watcher.error is None
        churned += 1
    for worker in workers:
        worker.join(timeout=100)
    assert failures == []
    assert churned > 0
    assert eventually(lambda: rt.state.events.subscribers == 0), "a subscriber was left behind"
    assert rt.state.check_invariants() == []
    assert rt.state.pods == {} and rt.state.containers == {}
