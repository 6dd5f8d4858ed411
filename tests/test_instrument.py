"""The instrument interceptor over a real socket: recording, history, assertions, faults."""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from crilab import FakeRuntime
from crilab.builders import container_config, pod_config
from crilab.runtime.instrument import Lognormal, Oversize
from crilab.runtime.servicer import STREAM_CHUNK
from crilab.serving import MAX_MESSAGE_BYTES
from crilab.stubs import api_pb2 as pb
from crilab.stubs import api_pb2_grpc

from .conftest import eventually

BUSYBOX = "localhost/crilab/busybox:local"
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class Stubs:
    def __init__(self, rt: FakeRuntime) -> None:
        self.channel = grpc.insecure_channel(rt.endpoint.replace("unix://", "unix:", 1))
        self.rs = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)

    def version(self) -> pb.VersionResponse:
        return self.rs.Version(pb.VersionRequest(version="v1"), timeout=10)

    def run_pod(self, name: str = "web") -> str:
        return self.rs.RunPodSandbox(
            pb.RunPodSandboxRequest(config=pod_config(name)), timeout=10
        ).pod_sandbox_id

    def create(self, pod_id: str, name: str = "app") -> str:
        cfg = container_config(name, BUSYBOX, ["sleep", "infinity"])
        return self.rs.CreateContainer(
            pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg), timeout=10
        ).container_id

    def start(self, cid: str) -> None:
        self.rs.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=10)

    def error_of(self, call, request) -> grpc.RpcError | None:
        try:
            call(request, timeout=10)
        except grpc.RpcError as err:
            return err
        return None


@pytest.fixture
def rt() -> Iterator[FakeRuntime]:
    with FakeRuntime(images=[BUSYBOX], seed="instrument") as runtime:
        yield runtime


@pytest.fixture
def s(rt: FakeRuntime) -> Iterator[Stubs]:
    stubs = Stubs(rt)
    yield stubs
    stubs.channel.close()


# -- recording -------------------------------------------------------------------------------


def test_every_call_is_recorded(rt: FakeRuntime, s: Stubs) -> None:
    s.version()
    pid = s.run_pod()
    s.images.ListImages(pb.ListImagesRequest(), timeout=10)
    err = s.error_of(s.rs.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id="0" * 64))
    assert err is not None and err.code() == grpc.StatusCode.NOT_FOUND
    calls = rt.calls
    assert [c.method for c in calls] == [
        "Version",
        "RunPodSandbox",
        "ListImages",
        "PodSandboxStatus",
    ]
    version, run, images, status = calls
    assert version.service == "runtime.v1.RuntimeService"
    assert images.service == "runtime.v1.ImageService"
    assert isinstance(version.request, pb.VersionRequest) and version.request.version == "v1"
    assert isinstance(version.response, pb.VersionResponse)
    assert version.response.runtime_api_version == "v1"
    assert run.request.config.metadata.name == "web"
    assert run.response.pod_sandbox_id == pid
    assert len(images.response.images) == 1
    for call in calls:
        assert call.duration >= 0
        assert call.peer
        assert call.started <= time.time()
        assert call.injected == ""
    assert [c.code for c in calls] == ["OK", "OK", "OK", "NOT_FOUND"]
    assert [c.ok for c in calls] == [True, True, True, False]
    assert status.response is None
    assert "not found" in status.details
    assert version.details == ""


def test_health_and_reflection_are_not_runtime_calls(rt: FakeRuntime, s: Stubs) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(s.channel)
    health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert rt.calls == []


def test_history_is_bounded() -> None:
    with FakeRuntime(history=5) as rt:
        s = Stubs(rt)
        s.version()
        s.images.ListImages(pb.ListImagesRequest(), timeout=10)
        for _ in range(3):
            s.rs.Status(pb.StatusRequest(), timeout=10)
        for _ in range(4):
            s.rs.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10)
        s.channel.close()
        assert [c.method for c in rt.calls] == ["Status"] + ["ListPodSandbox"] * 4


@pytest.mark.parametrize("history", [None, 0, -5, 2.5, "100", True])
def test_history_must_be_a_positive_number_of_calls(history) -> None:
    before = threading.active_count()
    with pytest.raises(
        ValueError, match=r"history is how many calls to keep.*e\.g\. history=10_000"
    ):
        FakeRuntime(history=history)
    assert threading.active_count() == before  # refused before anything was started


def test_calls_to_table_and_clear(rt: FakeRuntime, s: Stubs) -> None:
    s.version()
    s.run_pod("a")
    s.version()
    assert len(rt.calls_to("Version")) == 2
    assert [c.response.pod_sandbox_id for c in rt.calls_to("RunPodSandbox")] == list(rt.state.pods)
    assert rt.calls_to("StopPodSandbox") == []
    table = rt.calls_table()
    assert isinstance(table, list) and all(isinstance(row, dict) for row in table)
    assert [row["method"] for row in table] == ["Version", "RunPodSandbox", "Version"]
    row = table[0]
    assert {"method", "service", "code", "duration_ms", "peer", "injected"} <= set(row)
    assert row["code"] == "OK" and row["duration_ms"] >= 0
    assert row["service"] == "runtime.v1.RuntimeService"
    rt.clear_calls()
    assert rt.calls == [] and rt.calls_table() == []
    s.version()
    assert [c.method for c in rt.calls] == ["Version"]


def test_assert_calls(rt: FakeRuntime, s: Stubs) -> None:
    s.version()
    pid = s.run_pod()
    s.create(pid)
    rt.assert_calls(["Version", "RunPodSandbox"])
    rt.assert_calls(["Version", "CreateContainer"])  # a subsequence, gaps allowed
    rt.assert_calls([])
    rt.assert_calls(["Version", "RunPodSandbox", "CreateContainer"], exact=True)
    with pytest.raises(AssertionError) as err:
        rt.assert_calls(["RunPodSandbox", "Version"])  # wrong order
    message = str(err.value)
    assert "['RunPodSandbox', 'Version']" in message
    assert "['Version', 'RunPodSandbox', 'CreateContainer']" in message
    with pytest.raises(AssertionError, match="StartContainer"):
        rt.assert_calls(["StartContainer"])
    with pytest.raises(AssertionError, match="exactly"):
        rt.assert_calls(["Version", "RunPodSandbox"], exact=True)
    with pytest.raises(AssertionError):
        rt.assert_calls(["Version", "Version"])  # each expected call needs its own


def test_a_stream_is_recorded_with_its_message_count(rt: FakeRuntime, s: Stubs) -> None:
    pid = s.run_pod()
    for i in range(STREAM_CHUNK + 5):
        rt.state.create_container(pid, container_config(f"c{i}", BUSYBOX))
    chunks = list(s.rs.StreamContainers(pb.StreamContainersRequest(), timeout=30))
    assert len(chunks) == 2
    empty = list(s.images.StreamImages(pb.StreamImagesRequest(), timeout=30))
    assert len(empty) == 1
    stream, images = rt.calls_to("StreamContainers"), rt.calls_to("StreamImages")
    assert len(stream) == 1 and len(images) == 1
    assert (stream[0].code, stream[0].response) == ("OK", 2)
    assert isinstance(stream[0].request, pb.StreamContainersRequest)
    assert (images[0].code, images[0].response) == ("OK", 1)


def test_an_abandoned_stream_is_recorded_as_the_client_saw_it(rt: FakeRuntime, s: Stubs) -> None:
    waited = s.rs.GetContainerEvents(pb.GetEventsRequest(), timeout=0.3)
    with pytest.raises(grpc.RpcError) as err:
        list(waited)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert eventually(lambda: len(rt.calls_to("GetContainerEvents")) == 1)
    assert rt.calls_to("GetContainerEvents")[0].code == "DEADLINE_EXCEEDED"
    cancelled = s.rs.GetContainerEvents(pb.GetEventsRequest(), timeout=30)
    assert eventually(lambda: rt.state.events.subscribers == 1)
    cancelled.cancel()
    assert eventually(lambda: len(rt.calls_to("GetContainerEvents")) == 2)
    call = rt.calls_to("GetContainerEvents")[1]
    assert (call.code, call.response) == ("CANCELLED", 0)
    assert rt.state.events.subscribers == 0


def test_a_unary_call_that_outlives_its_deadline_is_recorded_as_the_client_saw_it(
    rt: FakeRuntime, s: Stubs
) -> None:
    """The servicer returned, but too late: the record must say what the client got."""
    rt.inject_latency(0.3, method="Version", ignore_deadline=True)
    with pytest.raises(grpc.RpcError) as err:
        s.rs.Version(pb.VersionRequest(), timeout=0.1)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert eventually(lambda: len(rt.calls_to("Version")) == 1)
    assert rt.calls_to("Version")[0].code == "DEADLINE_EXCEEDED"
    rt.clear_faults()
    s.version()  # a quick call within its deadline stays OK
    assert rt.calls_to("Version")[-1].code == "OK"


def test_a_large_response_is_not_kept(rt: FakeRuntime, s: Stubs) -> None:
    pid = s.run_pod()
    for i in range(STREAM_CHUNK):
        rt.state.create_container(pid, container_config(f"c{i}", BUSYBOX))
    listed = s.rs.ListContainers(pb.ListContainersRequest(), timeout=30)
    assert len(listed.containers) == STREAM_CHUNK
    (call,) = rt.calls_to("ListContainers")
    assert isinstance(call.response, str) and "not kept" in call.response


# -- injected errors -------------------------------------------------------------------------


def test_inject_error_times(rt: FakeRuntime, s: Stubs) -> None:
    pid = s.run_pod()
    cids = [s.create(pid, f"c{i}") for i in range(3)]
    rt.inject_error("StartContainer", "UNAVAILABLE", "boom", times=2)
    for cid in cids[:2]:
        err = s.error_of(s.rs.StartContainer, pb.StartContainerRequest(container_id=cid))
        assert err is not None
        assert (err.code(), err.details()) == (UNAVAILABLE, "boom")
        assert rt.state.containers[cid].item.state == pb.CONTAINER_CREATED  # state unchanged
    s.start(cids[2])
    assert rt.state.containers[cids[2]].item.state == pb.CONTAINER_RUNNING
    s.start(cids[0])  # the fault is used up: the first container starts now
    starts = rt.calls_to("StartContainer")
    assert [c.code for c in starts] == ["UNAVAILABLE", "UNAVAILABLE", "OK", "OK"]
    assert ["error" in c.injected for c in starts] == [True, True, False, False]
    assert starts[0].details == "boom"
    assert all(c.duration >= 0 for c in starts)
    assert rt.state.check_invariants() == []


def test_an_injected_failure_changes_no_state(rt: FakeRuntime, s: Stubs) -> None:
    rt.inject_error("RunPodSandbox", grpc.StatusCode.RESOURCE_EXHAUSTED)
    err = s.error_of(s.rs.RunPodSandbox, pb.RunPodSandboxRequest(config=pod_config("p", uid="u")))
    assert err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "injected" in err.details()  # a default message says where it came from
    assert rt.state.pods == {}
    pid = s.run_pod("p")  # the same name is free: nothing was reserved
    rt.inject_error("RemovePodSandbox", "internal", times=1)
    err = s.error_of(s.rs.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pid))
    assert err is not None and err.code() == grpc.StatusCode.INTERNAL
    assert list(rt.state.pods) == [pid]


def test_inject_error_on_every_method(rt: FakeRuntime, s: Stubs) -> None:
    rt.inject_error("*", "UNAVAILABLE", times=2)
    assert s.error_of(s.rs.Version, pb.VersionRequest()).code() == UNAVAILABLE
    err = s.error_of(s.images.ListImages, pb.ListImagesRequest())
    assert err.code() == UNAVAILABLE
    assert s.error_of(s.rs.Version, pb.VersionRequest()) is None


def test_inject_error_with_probability(rt: FakeRuntime, s: Stubs) -> None:
    rt.inject_error("Version", "UNAVAILABLE", probability=1.0)
    for _ in range(5):  # with a probability and no count, it lasts until cleared
        assert s.error_of(s.rs.Version, pb.VersionRequest()).code() == UNAVAILABLE
    assert s.error_of(s.rs.Status, pb.StatusRequest()) is None  # only Version
    rt.clear_faults()
    assert s.error_of(s.rs.Version, pb.VersionRequest()) is None
    rt.inject_error("Version", "UNAVAILABLE", probability=0.0)
    for _ in range(5):
        assert s.error_of(s.rs.Version, pb.VersionRequest()) is None
    assert all(c.injected == "" for c in rt.calls_to("Version")[-5:])
    rt.clear_faults()
    rt.inject_error("Version", "UNAVAILABLE", times=3, probability=1.0)
    codes = [getattr(s.error_of(s.rs.Version, pb.VersionRequest()), "code", None) for _ in range(4)]
    assert [c() if c else None for c in codes] == [UNAVAILABLE] * 3 + [None]


def failures(s: Stubs, count: int) -> list[bool]:
    return [s.error_of(s.rs.Version, pb.VersionRequest()) is not None for _ in range(count)]


def test_an_explicit_times_1_with_a_probability_fails_once(rt: FakeRuntime, s: Stubs) -> None:
    rt.inject_error("Version", "UNAVAILABLE", times=1, probability=1.0)
    assert failures(s, 4) == [True, False, False, False]
    assert rt.instrument._faults == []  # used up


def test_a_seeded_probability_fails_the_same_calls_every_run(rt: FakeRuntime, s: Stubs) -> None:
    rt.inject_error("Version", "UNAVAILABLE", probability=0.3, seed=42)
    first = failures(s, 60)
    draws = random.Random(42)
    assert first == [draws.random() < 0.3 for _ in range(60)]  # one draw per call
    assert 0 < sum(first) < 60, "a probability strictly between 0 and 1 fails some calls"
    rt.clear_faults()
    rt.inject_error("Version", "UNAVAILABLE", probability=0.3, seed=42)
    assert failures(s, 60) == first
    failed = [c for c in rt.calls_to("Version") if not c.ok]
    assert all(c.code == "UNAVAILABLE" and c.injected == "error" for c in failed)


def test_a_probability_with_times_stops_after_that_many_failures(rt: FakeRuntime, s: Stubs) -> None:
    rt.inject_error("Version", "UNAVAILABLE", times=3, probability=0.5, seed=7)
    seen = failures(s, 40)
    draws = random.Random(7)
    expected, left = [], 3
    for _ in range(40):
        fails = left > 0 and draws.random() < 0.5
        left -= fails
        expected.append(fails)
    assert seen == expected
    assert sum(seen) == 3 and not all(seen[:3]), "by chance, then used up"


def test_inject_bad_arguments(rt: FakeRuntime) -> None:
    with pytest.raises(ValueError, match=r"did you mean 'StartContainer'\?"):
        rt.inject_error("startcontainer", "UNAVAILABLE")
    with pytest.raises(ValueError, match="no RPC named 'Launch'"):
        rt.inject_error("Launch", "UNAVAILABLE")
    with pytest.raises(ValueError, match="did you mean 'Version'"):
        rt.inject_latency(0.1, method="version")
    with pytest.raises(ValueError, match="unknown gRPC status code"):
        rt.inject_error("Version", "NOPE")
    with pytest.raises(ValueError, match="non-OK"):
        rt.inject_error("Version", "OK")
    with pytest.raises(ValueError, match="probability"):
        rt.inject_error("Version", "UNAVAILABLE", probability=1.5)
    with pytest.raises(ValueError, match=">= 0"):
        rt.inject_latency(-1)
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite number of seconds"):
            rt.inject_latency(value)
    with pytest.raises(TypeError, match=r"number of seconds.*not str '0\.1'"):
        rt.inject_latency("0.1")
    for times in (0, -1):
        with pytest.raises(ValueError, match=f"times={times} would inject nothing"):
            rt.inject_error("Version", "UNAVAILABLE", times=times)
        with pytest.raises(ValueError, match="would inject nothing"):
            rt.inject_latency(0.1, times=times)
    with pytest.raises(TypeError, match="whole number of calls"):
        rt.inject_error("Version", "UNAVAILABLE", times=1.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        rt.inject_error("Version", "UNAVAILABLE", probability=float("nan"))
    assert rt.instrument._faults == []


# -- injected latency ------------------------------------------------------------------------


def test_inject_latency_on_one_method(rt: FakeRuntime, s: Stubs) -> None:
    rt.inject_latency(0.2, method="Version")
    t0 = time.perf_counter()
    s.version()
    assert time.perf_counter() - t0 >= 0.2
    s.images.ListImages(pb.ListImagesRequest(), timeout=10)
    (version,) = rt.calls_to("Version")
    (images,) = rt.calls_to("ListImages")
    assert version.duration >= 0.2
    assert version.injected == "latency 0.200s"
    assert images.injected == ""  # other methods are not delayed
    rt.clear_faults()
    s.version()
    assert rt.calls_to("Version")[-1].injected == ""


def test_latency_and_error_together(rt: FakeRuntime, s: Stubs) -> None:
    rt.inject_latency(0.05, method="Version", times=1)
    rt.inject_error("Version", "DEADLINE_EXCEEDED", "slow and failed")
    err = s.error_of(s.rs.Version, pb.VersionRequest())
    assert (err.code(), err.details()) == (grpc.StatusCode.DEADLINE_EXCEEDED, "slow and failed")
    (call,) = rt.calls_to("Version")
    assert "latency" in call.injected and "error" in call.injected
    assert call.duration >= 0.05
    assert s.error_of(s.rs.Version, pb.VersionRequest()) is None
    assert rt.calls_to("Version")[-1].injected == ""


def test_lognormal_draws() -> None:
    draw = Lognormal(p50=0.01, p99=0.05, seed=7)
    values = [draw() for _ in range(2000)]
    assert all(v > 0 for v in values)
    assert statistics.median(values) == pytest.approx(0.01, rel=0.2)
    p99 = sorted(values)[int(0.99 * len(values))]
    assert 0.025 < p99 < 0.1
    again = Lognormal(p50=0.01, p99=0.05, seed=7)
    assert [again() for _ in range(5)] == values[:5]  # seeded: the same draws
    assert "p50=0.01" in repr(draw)
    with pytest.raises(ValueError):
        Lognormal(p50=0.05, p99=0.01)
    with pytest.raises(ValueError):
        Lognormal(p50=0, p99=0.01)


def test_lognormal_latency_is_drawn_per_call(rt: FakeRuntime, s: Stubs) -> None:
    rt.inject_latency(Lognormal(p50=0.002, p99=0.01, seed=1), method="Status")
    for _ in range(5):
        s.rs.Status(pb.StatusRequest(), timeout=10)
    notes = [c.injected for c in rt.calls_to("Status")]
    assert all(n.startswith("latency ") for n in notes)
    assert len(set(notes)) > 1


def test_latency_without_a_method_delays_every_method(rt: FakeRuntime, s: Stubs) -> None:
    rt.inject_latency(0.05)
    s.version()
    s.images.ListImages(pb.ListImagesRequest(), timeout=10)
    s.rs.Status(pb.StatusRequest(), timeout=10)
    calls = rt.calls
    assert [c.method for c in calls] == ["Version", "ListImages", "Status"]
    assert all(c.injected == "latency 0.050s" and c.ok for c in calls)
    assert all(c.duration >= 0.05 for c in calls)


def test_latency_on_a_stream_call(rt: FakeRuntime, s: Stubs) -> None:
    pid = s.run_pod()
    for i in range(STREAM_CHUNK + 1):
        rt.state.create_container(pid, container_config(f"c{i}", BUSYBOX))
    rt.inject_latency(0.1, method="StreamContainers", times=1)
    chunks = list(s.rs.StreamContainers(pb.StreamContainersRequest(), timeout=30))
    assert sum(len(c.containers) for c in chunks) == STREAM_CHUNK + 1
    (call,) = rt.calls_to("StreamContainers")
    assert (call.code, call.response, call.injected) == ("OK", 2, "latency 0.100s")
    assert call.duration >= 0.1
    # and a delayed stream ends at its deadline, recorded as the client saw it
    rt.inject_latency(60, method="GetContainerEvents")
    with pytest.raises(grpc.RpcError) as err:
        list(s.rs.GetContainerEvents(pb.GetEventsRequest(), timeout=0.3))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert eventually(lambda: len(rt.calls_to("GetContainerEvents")) == 1)
    (events,) = rt.calls_to("GetContainerEvents")
    assert (events.code, events.response) == ("DEADLINE_EXCEEDED", 0)
    assert events.injected.startswith("latency 60.000s (deadline passed after")
    assert rt.state.events.subscribers == 0  # it never subscribed


def test_a_negative_draw_is_no_delay(rt: FakeRuntime, s: Stubs) -> None:
    rt.inject_latency(lambda: -1.0, method="Version")
    assert s.version().runtime_api_version == "v1"
    (call,) = rt.calls_to("Version")
    assert (call.code, call.injected) == ("OK", "latency 0.000s")


@pytest.mark.parametrize(
    ("draw", "says"),
    [
        (lambda: 1 / 0, "raised ZeroDivisionError: division by zero"),
        (lambda: float("nan"), "returned nan, not a finite number of seconds"),
        (lambda: "soon", "returned 'soon', not a number of seconds"),
    ],
)
def test_a_failing_draw_is_a_recorded_error_that_says_why(
    rt: FakeRuntime, s: Stubs, draw, says: str
) -> None:
    rt.inject_latency(draw, method="Version")
    err = s.error_of(s.rs.Version, pb.VersionRequest())
    assert err is not None and err.code() == grpc.StatusCode.INTERNAL
    assert says in err.details() and "inject_latency takes seconds >= 0" in err.details()
    (call,) = rt.calls_to("Version")
    assert (call.code, call.injected) == ("INTERNAL", "latency draw failed")
    assert says in call.details
    assert s.rs.Status(pb.StatusRequest(), timeout=10) is not None  # other methods unharmed
    rt.clear_faults()
    assert s.version().runtime_api_version == "v1"


def test_a_slow_draw_holds_up_only_its_own_call(rt: FakeRuntime, s: Stubs) -> None:
    """The draw runs outside the instrument's lock: other calls go on meanwhile."""
    entered, release = threading.Event(), threading.Event()

    def slow_draw() -> float:
        entered.set()
        release.wait(30)
        return 0.0

    rt.inject_latency(slow_draw, method="Version")
    rt.inject_error("ListImages", "UNAVAILABLE", times=None)  # Status still meets a fault list
    pending = s.rs.Version.future(pb.VersionRequest(), timeout=60)
    try:
        assert entered.wait(10)
        assert s.rs.Status(pb.StatusRequest(), timeout=10) is not None
        assert s.error_of(s.images.ListImages, pb.ListImagesRequest()).code() == UNAVAILABLE
        assert not pending.done()
    finally:
        release.set()
    assert pending.result(timeout=10).runtime_api_version == "v1"
    assert [c.method for c in rt.calls] == ["Status", "ListImages", "Version"]


def test_clear_faults_restores(rt: FakeRuntime, s: Stubs) -> None:
    rt.inject_latency(30)
    rt.inject_error("Version", "UNAVAILABLE", times=None)
    rt.clear_faults()
    # a latency still in force would outlast these deadlines: both calls would fail
    assert s.rs.Version(pb.VersionRequest(), timeout=5).runtime_api_version == "v1"
    assert s.images.ListImages(pb.ListImagesRequest(), timeout=5) is not None
    assert all(c.injected == "" and c.ok for c in rt.calls)


def wait_for_waiting(rt: FakeRuntime, count: int) -> None:
    assert eventually(lambda: rt.instrument.waiting == count, within=10), rt.instrument.waiting


def test_clearing_ends_a_delay_already_under_way(rt: FakeRuntime, s: Stubs) -> None:
    rt.inject_latency(60, method="Version")
    rt.inject_error("Version", "UNAVAILABLE", times=None)
    pending = [s.rs.Version.future(pb.VersionRequest(), timeout=60) for _ in range(3)]
    wait_for_waiting(rt, 3)
    assert rt.calls == []  # none has finished
    rt.clear_faults()
    # the result() bound proves "no hang": the 60 s delay and the error are both gone
    assert [f.result(timeout=10).runtime_api_version for f in pending] == ["v1"] * 3
    assert rt.instrument.waiting == 0
    calls = rt.calls_to("Version")
    assert [c.code for c in calls] == ["OK"] * 3
    assert all(c.injected.startswith("latency 60.000s (cleared after") for c in calls)
    assert all(c.duration < 60 for c in calls)
    s.version()
    assert rt.calls_to("Version")[-1].injected == ""


def test_delays_end_at_the_deadline_and_free_the_workers() -> None:
    """More delayed calls than workers: each ends at its deadline, so others get served."""
    with FakeRuntime(max_workers=2) as rt:
        s = Stubs(rt)
        rt.inject_latency(60, method="Version")
        pending = [s.rs.Version.future(pb.VersionRequest(), timeout=0.5) for _ in range(4)]
        codes = []
        for f in pending:
            with pytest.raises(grpc.RpcError) as err:
                f.result(timeout=10)
            codes.append(err.value.code())
        assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 4
        # with the workers still asleep this call would time out
        assert s.rs.Status(pb.StatusRequest(), timeout=10) is not None
        # the two that held the workers are recorded; a call whose deadline passed while it
        # queued for a worker may be dropped by grpc before any handler (or record) sees it
        assert eventually(lambda: len(rt.calls_to("Version")) >= 2)
        assert {c.code for c in rt.calls_to("Version")} == {"DEADLINE_EXCEEDED"}
        assert eventually(lambda: rt.instrument.waiting == 0)
        s.channel.close()


def test_a_latency_that_ignores_the_deadline_works_on_for_a_gone_caller(
    rt: FakeRuntime, s: Stubs
) -> None:
    """A server that never checks its deadline: the reply is made, and nobody reads it."""
    rt.inject_latency(0.3, method="Version", ignore_deadline=True, times=1)
    with pytest.raises(grpc.RpcError) as err:
        s.rs.Version(pb.VersionRequest(), timeout=0.05)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert eventually(lambda: len(rt.calls_to("Version")) == 1)
    (call,) = rt.calls_to("Version")
    assert (call.code, call.injected) == ("DEADLINE_EXCEEDED", "latency 0.300s")
    assert call.duration >= 0.3 and call.response.runtime_name == "crilab-fake"
    # clear_faults() still ends such a wait
    rt.inject_latency(60, method="Version", ignore_deadline=True)
    with pytest.raises(grpc.RpcError):
        s.rs.Version(pb.VersionRequest(), timeout=0.05)
    wait_for_waiting(rt, 1)  # past its caller's deadline, still waiting
    rt.clear_faults()
    assert eventually(lambda: len(rt.calls_to("Version")) == 2)
    assert "(cleared after" in rt.calls_to("Version")[1].injected
    assert rt.instrument.waiting == 0


def test_a_cancel_ends_a_delay_and_is_recorded(rt: FakeRuntime, s: Stubs) -> None:
    rt.inject_latency(60, method="Version")
    pending = s.rs.Version.future(pb.VersionRequest(), timeout=60)
    wait_for_waiting(rt, 1)
    assert pending.cancel()
    assert eventually(lambda: len(rt.calls_to("Version")) == 1)
    (call,) = rt.calls_to("Version")
    assert call.code == "CANCELLED"
    assert call.injected.startswith("latency 60.000s (cancelled after")
    assert "cancelled" in call.details
    assert rt.instrument.waiting == 0


def test_stop_ends_delays_under_way() -> None:
    rt = FakeRuntime()
    s = Stubs(rt)
    rt.inject_latency(60)
    pending = [s.rs.Version.future(pb.VersionRequest(), timeout=60) for _ in range(3)]
    wait_for_waiting(rt, 3)
    rt.stop()
    for f in pending:
        with pytest.raises(grpc.RpcError) as err:
            f.result(timeout=10)
        assert err.value.code() == UNAVAILABLE
    assert eventually(lambda: len(rt.calls) == 3)
    assert {c.code for c in rt.calls} == {"UNAVAILABLE"}
    assert all("runtime stopped after" in c.injected for c in rt.calls)
    assert rt.instrument.waiting == 0
    s.channel.close()


def test_reset_clears_calls_and_faults(rt: FakeRuntime, s: Stubs) -> None:
    s.run_pod()
    rt.inject_error("Version", "UNAVAILABLE", times=None)
    rt.reset()
    assert rt.calls == [] and rt.state.pods == {}
    assert s.error_of(s.rs.Version, pb.VersionRequest()) is None


def test_history_keeps_messages_within_a_byte_budget(monkeypatch) -> None:
    from crilab import FakeRuntime, connect
    from crilab.builders import container_config, pod_config
    from crilab.runtime import instrument

    monkeypatch.setattr(instrument, "KEEP_TOTAL_BYTES", 20_000)
    with FakeRuntime(images=["busybox"]) as rt:
        pod = rt.state.run_pod_sandbox(pod_config("p"))
        for i in range(20):
            rt.state.create_container(pod, container_config(f"c{i}", "busybox"))
        client = connect(rt.endpoint)
        for _ in range(10):
            client.list_containers()
        lists = rt.calls_to("ListContainers")
        assert isinstance(lists[0].response, str) and "no longer kept" in lists[0].response
        assert len(lists[-1].response.containers) == 20, "the newest answers are kept whole"
        client.close()


def test_messages_leave_with_their_calls() -> None:
    """Small answers never reach the byte budget: they must still go when their call
    leaves the ring buffer, or a long-running kernel grows by every Version it served."""
    import gc

    from crilab import FakeRuntime, connect
    from crilab.stubs import api_pb2 as pb

    with FakeRuntime(history=50) as rt:
        client = connect(rt.endpoint)
        for _ in range(300):
            client.version()
        client.close()
        assert len(rt.calls) == 50
        gc.collect()
        alive = sum(isinstance(o, pb.VersionResponse) for o in gc.get_objects())
        assert alive <= 60, f"{alive} VersionResponse messages kept for a history of 50 calls"


# -- requests past the message limit ---------------------------------------------------------


def test_a_request_over_16_mib_is_refused_with_advice_and_recorded(rt: FakeRuntime) -> None:
    channel = grpc.insecure_channel(
        rt.endpoint.replace("unix://", "unix:", 1),
        options=[("grpc.max_send_message_length", 64 * 1024 * 1024)],
    )
    rs = api_pb2_grpc.RuntimeServiceStub(channel)
    big = pb.VersionRequest(version="x" * (MAX_MESSAGE_BYTES + 1))
    with pytest.raises(grpc.RpcError) as err:
        rs.Version(big, timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = err.value.details()
    assert f"{big.ByteSize()} bytes" in details
    assert "16 MiB" in details and "kubelet" in details and "Send less" in details
    (call,) = rt.calls_to("Version")
    assert (call.code, call.details) == ("RESOURCE_EXHAUSTED", details)
    assert isinstance(call._request, Oversize) and call._request.size == big.ByteSize()
    assert "not decoded" in str(call.request)
    at_limit = pb.VersionRequest(version="x" * (MAX_MESSAGE_BYTES - 10))
    assert at_limit.ByteSize() <= MAX_MESSAGE_BYTES
    assert rs.Version(at_limit, timeout=30).runtime_api_version == "v1"  # still serving
    assert rt.calls_to("Version")[-1].ok
    channel.close()
