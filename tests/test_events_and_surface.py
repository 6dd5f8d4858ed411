"""Container events, stats, the Stream* twins and the rest of the surface, over a real socket."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from crilab import FakeRuntime
from crilab.builders import container_config, pod_config
from crilab.client import CHANNEL_OPTIONS
from crilab.runtime.state import EVENT_TRIMMED_NOTE
from crilab.stubs import api_pb2 as pb
from crilab.stubs import api_pb2_grpc

from .conftest import eventually

BUSYBOX = "localhost/crilab/busybox:local"
LIFECYCLE = [
    pb.CONTAINER_CREATED_EVENT,
    pb.CONTAINER_STARTED_EVENT,
    pb.CONTAINER_STOPPED_EVENT,
    pb.CONTAINER_DELETED_EVENT,
]
GRPC_DEFAULT_UNIMPLEMENTED = "Method not implemented!"


class Stubs:
    def __init__(self, rt: FakeRuntime) -> None:
        self.channel = grpc.insecure_channel(rt.endpoint.replace("unix://", "unix:", 1))
        self.rs = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)

    def error_of(self, call, request) -> grpc.RpcError | None:
        try:
            call(request, timeout=10)
        except grpc.RpcError as err:
            return err
        return None

    def run_pod(self, name: str = "web", **kw) -> str:
        return self.rs.RunPodSandbox(
            pb.RunPodSandboxRequest(config=pod_config(name, **kw)), timeout=10
        ).pod_sandbox_id

    def create(self, pod_id: str, name: str = "app", command=("sleep", "infinity"), **kw) -> str:
        cfg = container_config(name, BUSYBOX, command, **kw)
        return self.rs.CreateContainer(
            pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg), timeout=10
        ).container_id

    def start(self, cid: str) -> None:
        self.rs.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=10)

    def stop(self, cid: str) -> None:
        self.rs.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=10)

    def remove(self, cid: str) -> None:
        self.rs.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=10)

    def lifecycle(self, pod_id: str, name: str = "app") -> str:
        cid = self.create(pod_id, name)
        self.start(cid)
        self.stop(cid)
        self.remove(cid)
        return cid

    def status(self, cid: str) -> pb.ContainerStatus:
        return self.rs.ContainerStatus(
            pb.ContainerStatusRequest(container_id=cid), timeout=10
        ).status

    def container_stats(self, cid: str) -> pb.ContainerStats:
        return self.rs.ContainerStats(pb.ContainerStatsRequest(container_id=cid), timeout=10).stats


@pytest.fixture
def rt() -> Iterator[FakeRuntime]:
    with FakeRuntime(images=[BUSYBOX], seed="surface") as runtime:
        yield runtime


@pytest.fixture
def s(rt: FakeRuntime) -> Iterator[Stubs]:
    stubs = Stubs(rt)
    yield stubs
    stubs.channel.close()


class Listener:
    """A GetContainerEvents client call read on its own thread until ``count`` events came."""

    def __init__(self, s: Stubs, count: int) -> None:
        self.call = s.rs.GetContainerEvents(pb.GetEventsRequest(), timeout=30)
        self.events: list[pb.ContainerEventResponse] = []
        self.error: grpc.RpcError | None = None
        self.count = count
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.call:
                self.events.append(event)
                if len(self.events) >= self.count:
                    return
        except grpc.RpcError as err:
            self.error = err

    def wait(self, within: float = 10.0) -> list[pb.ContainerEventResponse]:
        self.thread.join(within)
        assert not self.thread.is_alive(), f"only {len(self.events)} of {self.count} events came"
        assert self.error is None
        return self.events


# -- GetContainerEvents ----------------------------------------------------------------------


def test_a_subscriber_gets_a_lifecycle_in_order(rt: FakeRuntime, s: Stubs) -> None:
    pid = s.run_pod()
    listener = Listener(s, 4)
    assert eventually(lambda: rt.state.events.subscribers == 1)
    cid = s.lifecycle(pid)
    events = listener.wait()
    listener.call.cancel()
    assert [e.container_event_type for e in events] == LIFECYCLE
    for event in events:
        assert event.container_id == cid
        assert event.pod_sandbox_status.id == pid
        assert event.pod_sandbox_status.state == pb.SANDBOX_READY
        assert event.pod_sandbox_status.metadata.name == "web"
        assert event.created_at > 0
    assert eventually(lambda: rt.state.events.subscribers == 0)


def test_two_subscribers_both_get_the_events(rt: FakeRuntime, s: Stubs) -> None:
    pid = s.run_pod()
    listeners = [Listener(s, 4), Listener(s, 4)]
    assert eventually(lambda: rt.state.events.subscribers == 2)
    cid = s.lifecycle(pid)
    for listener in listeners:
        events = listener.wait()
        listener.call.cancel()
        assert [(e.container_id, e.container_event_type) for e in events] == [
            (cid, kind) for kind in LIFECYCLE
        ]
        assert all(e.pod_sandbox_status.id == pid for e in events)
    assert eventually(lambda: rt.state.events.subscribers == 0)


def test_a_cancelled_subscriber_is_cleaned_up(rt: FakeRuntime, s: Stubs) -> None:
    before = rt.state.events.subscribers
    listener = Listener(s, 1)
    assert eventually(lambda: rt.state.events.subscribers == before + 1)
    listener.call.cancel()
    listener.thread.join(5)
    assert listener.error is not None and listener.error.code() == grpc.StatusCode.CANCELLED
    assert eventually(lambda: rt.state.events.subscribers == before)
    # the runtime goes on publishing to nobody
    s.lifecycle(s.run_pod())
    assert rt.state.events.subscribers == before
    assert eventually(lambda: bool(rt.calls_to("GetContainerEvents")))
    (call,) = rt.calls_to("GetContainerEvents")
    assert call.code == "CANCELLED"


def test_a_slow_subscriber_cannot_stall_the_runtime(rt: FakeRuntime, s: Stubs) -> None:
    sub = rt.state.events.subscribe(queue_size=4)
    try:
        pid = s.run_pod()
        for i in range(50):  # 50 steps: create, start, stop, remove, create, ...
            if i % 4 == 0:
                cid = s.create(pid, f"c{i}")
            else:
                (s.start, s.stop, s.remove)[i % 4 - 1](cid)
        assert sub.dropped == 50 - 4
        kept = [sub.get(timeout=1) for _ in range(4)]
        assert [e.container_event_type for e in kept] == [
            pb.CONTAINER_STOPPED_EVENT,  # step 46
            pb.CONTAINER_DELETED_EVENT,
            pb.CONTAINER_CREATED_EVENT,
            pb.CONTAINER_STARTED_EVENT,  # step 49, the last
        ]
        assert sub.get(timeout=0.01) is None
    finally:
        sub.close()
    assert rt.state.events.subscribers == 0


def test_a_watcher_that_stopped_reading_holds_a_few_mib(rt: FakeRuntime, s: Stubs) -> None:
    """The audit's case: one gRPC watcher that never reads, a pod with a container carrying
    512 KiB of annotations, 1200 tiny calls; each event copies every status of the pod, so
    a count bound alone kept ~1024 x 512 KiB. The queue now stays within its byte bound."""
    watch = s.rs.GetContainerEvents(pb.GetEventsRequest())  # never read
    assert eventually(lambda: rt.state.events.subscribers == 1)
    pid = s.run_pod()
    s.create(pid, "fat", annotations={"a": "x" * (512 << 10)})
    for i in range(600):
        s.remove(s.create(pid, f"c{i}", ("true",)))
    [sub] = rt.state.events.subscriptions()
    assert sub.queued_bytes <= rt.state.events.queue_bytes  # 8 MiB, not hundreds
    assert sub.dropped > 0  # the oldest went, as the policy says
    watch.cancel()
    assert eventually(lambda: rt.state.events.subscribers == 0)


def test_an_event_over_the_message_limit_reaches_the_watcher_trimmed(
    rt: FakeRuntime, s: Stubs
) -> None:
    """Five containers with 4 MiB of annotations each: every later event of the pod would
    be 20 MiB; sent whole, it ended every GetContainerEvents stream (RESOURCE_EXHAUSTED)."""
    channel = grpc.insecure_channel(
        rt.endpoint.replace("unix://", "unix:", 1), options=list(CHANNEL_OPTIONS)
    )
    rs = api_pb2_grpc.RuntimeServiceStub(channel)
    pid = s.run_pod()
    big = pb.CreateContainerRequest(pod_sandbox_id=pid)
    call = rs.GetContainerEvents(pb.GetEventsRequest(), timeout=60)
    assert eventually(lambda: rt.state.events.subscribers == 1)
    for i in range(5):
        big.config.CopyFrom(
            container_config(f"big{i}", BUSYBOX, ["true"], annotations={"a": "x" * (4 << 20)})
        )
        rs.CreateContainer(big, timeout=30)
    small = s.create(pid, "small")
    s.start(small)
    events = []
    for event in call:  # a RESOURCE_EXHAUSTED here would raise; big ones may be dropped
        events.append(event)
        if event.container_id == small and event.container_event_type == LIFECYCLE[1]:
            break
    call.cancel()
    channel.close()
    last = events[-1]
    assert last.container_id == small
    assert [c.id for c in last.containers_statuses] == [small]
    assert "PodSandboxStatus" in last.pod_sandbox_status.annotations[EVENT_TRIMMED_NOTE]


# -- stats -----------------------------------------------------------------------------------


def test_container_stats_of_running_and_exited(rt: FakeRuntime, s: Stubs) -> None:
    pid = s.run_pod()
    cid = s.create(pid, labels={"app": "web"})
    s.start(cid)
    first = s.container_stats(cid)
    time.sleep(0.2)
    second = s.container_stats(cid)
    assert first.attributes.id == cid and first.attributes.metadata.name == "app"
    assert first.attributes.labels["app"] == "web"
    assert second.cpu.usage_core_nano_seconds.value > first.cpu.usage_core_nano_seconds.value
    assert second.cpu.timestamp > first.cpu.timestamp
    assert second.cpu.usage_nano_cores.value > 0
    assert second.memory.working_set_bytes.value > 0
    s.stop(cid)
    exited = s.container_stats(cid)
    assert exited.cpu.usage_nano_cores.value == 0
    assert exited.memory.working_set_bytes.value == 0
    later = s.container_stats(cid)
    assert later.cpu.usage_core_nano_seconds.value == exited.cpu.usage_core_nano_seconds.value
    err = s.error_of(s.rs.ContainerStats, pb.ContainerStatsRequest(container_id="0" * 64))
    assert err is not None and err.code() == grpc.StatusCode.NOT_FOUND


def test_list_and_pod_stats(rt: FakeRuntime, s: Stubs) -> None:
    a = s.run_pod("a", labels={"app": "web"})
    b = s.run_pod("b", labels={"app": "db"})
    ca = s.create(a, "ca", labels={"role": "x"})
    cb = s.create(b, "cb", labels={"role": "y"})
    s.start(ca)

    def listed(**kw) -> list[str]:
        req = pb.ListContainerStatsRequest(filter=pb.ContainerStatsFilter(**kw))
        return [st.attributes.id for st in s.rs.ListContainerStats(req, timeout=10).stats]

    everything = s.rs.ListContainerStats(pb.ListContainerStatsRequest(), timeout=10).stats
    assert [st.attributes.id for st in everything] == [ca, cb]
    assert listed(id=ca[:10]) == [ca]
    assert listed(pod_sandbox_id=b) == [cb]
    assert listed(label_selector={"role": "x"}) == [ca]
    assert listed(label_selector={"role": "z"}) == []

    pod = s.rs.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=a), timeout=10).stats
    assert pod.attributes.id == a and pod.attributes.metadata.name == "a"
    assert [c.attributes.id for c in pod.linux.containers] == [ca]
    (only,) = pod.linux.containers
    assert pod.linux.cpu.usage_nano_cores.value == only.cpu.usage_nano_cores.value
    assert pod.linux.memory.working_set_bytes.value > 0
    assert pod.linux.network.default_interface.name == "eth0"
    assert pod.linux.process.process_count.value == 2  # the pause process and the app
    err = s.error_of(s.rs.PodSandboxStats, pb.PodSandboxStatsRequest(pod_sandbox_id="0" * 64))
    assert err is not None and err.code() == grpc.StatusCode.NOT_FOUND

    def pods(**kw) -> list[str]:
        req = pb.ListPodSandboxStatsRequest(filter=pb.PodSandboxStatsFilter(**kw))
        return [st.attributes.id for st in s.rs.ListPodSandboxStats(req, timeout=10).stats]

    all_pods = s.rs.ListPodSandboxStats(pb.ListPodSandboxStatsRequest(), timeout=10).stats
    assert [st.attributes.id for st in all_pods] == [a, b]
    assert pods(label_selector={"app": "db"}) == [b]
    assert pods(id=a[:12]) == [a]


def test_metrics(rt: FakeRuntime, s: Stubs) -> None:
    pid = s.run_pod("m")
    cid = s.create(pid)
    s.start(cid)
    descriptors = s.rs.ListMetricDescriptors(pb.ListMetricDescriptorsRequest(), timeout=10)
    names = {d.name for d in descriptors.descriptors}
    assert "container_cpu_usage_seconds_total" in names
    assert "container_memory_working_set_bytes" in names
    assert all(d.help and list(d.label_keys) for d in descriptors.descriptors)
    metrics = s.rs.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest(), timeout=10)
    (pod,) = metrics.pod_metrics
    assert pod.pod_sandbox_id == pid
    assert [c.container_id for c in pod.container_metrics] == [cid]
    used = {m.name for c in pod.container_metrics for m in c.metrics} | {
        m.name for m in pod.metrics
    }
    assert used <= names  # every metric sent is described
    by_name = {m.name: m for m in pod.container_metrics[0].metrics}
    working_set = by_name["container_memory_working_set_bytes"]
    assert working_set.value.value > 0 and working_set.metric_type == pb.GAUGE


def test_stream_twins_answer_what_list_answers(rt: FakeRuntime, s: Stubs) -> None:
    rt.state.pull_image("alpine")
    a = s.run_pod("a")
    b = s.run_pod("b", labels={"app": "web"})
    for pod, names in ((a, ["x", "y"]), (b, ["z"])):
        for name in names:
            s.start(s.create(pod, name))
    s.stop(s.create(a, "w"))

    def streamed(call, request, field: str) -> list:
        return [item for msg in call(request, timeout=10) for item in getattr(msg, field)]

    listed = s.rs.ListContainers(pb.ListContainersRequest(), timeout=10).containers
    assert len(listed) == 4
    assert streamed(s.rs.StreamContainers, pb.StreamContainersRequest(), "containers") == list(
        listed
    )
    flt = pb.ContainerFilter(pod_sandbox_id=a)
    assert streamed(
        s.rs.StreamContainers, pb.StreamContainersRequest(filter=flt), "containers"
    ) == list(s.rs.ListContainers(pb.ListContainersRequest(filter=flt), timeout=10).containers)

    pods = s.rs.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items
    assert [p.id for p in pods] == [a, b]
    assert streamed(s.rs.StreamPodSandboxes, pb.StreamPodSandboxesRequest(), "pod_sandboxes") == (
        list(pods)
    )
    pflt = pb.PodSandboxFilter(label_selector={"app": "web"})
    assert [
        p.id
        for p in streamed(
            s.rs.StreamPodSandboxes, pb.StreamPodSandboxesRequest(filter=pflt), "pod_sandboxes"
        )
    ] == [b]

    images = s.images.ListImages(pb.ListImagesRequest(), timeout=10).images
    assert len(images) == 2
    assert streamed(s.images.StreamImages, pb.StreamImagesRequest(), "images") == list(images)

    # stats move with time, so compare who is reported, not the figures
    def ids(items) -> list[str]:
        return [i.attributes.id for i in items]

    stats = s.rs.ListContainerStats(pb.ListContainerStatsRequest(), timeout=10).stats
    ctr_stats = streamed(
        s.rs.StreamContainerStats, pb.StreamContainerStatsRequest(), "container_stats"
    )
    assert ids(ctr_stats) == ids(stats) == [c.id for c in listed]
    pod_stats = s.rs.ListPodSandboxStats(pb.ListPodSandboxStatsRequest(), timeout=10).stats
    streamed_pods = streamed(
        s.rs.StreamPodSandboxStats, pb.StreamPodSandboxStatsRequest(), "pod_sandbox_stats"
    )
    assert ids(streamed_pods) == ids(pod_stats) == [a, b]
    metrics = s.rs.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest(), timeout=10)
    streamed_metrics = streamed(
        s.rs.StreamPodSandboxMetrics, pb.StreamPodSandboxMetricsRequest(), "pod_sandbox_metrics"
    )
    assert [m.pod_sandbox_id for m in streamed_metrics] == [
        m.pod_sandbox_id for m in metrics.pod_metrics
    ]
    assert [[c.container_id for c in m.container_metrics] for m in streamed_metrics] == [
        [c.container_id for c in m.container_metrics] for m in metrics.pod_metrics
    ]


# -- the other RuntimeService calls ----------------------------------------------------------


def test_update_container_resources_shows_in_status(rt: FakeRuntime, s: Stubs) -> None:
    cid = s.create(s.run_pod())
    linux = pb.LinuxContainerResources(
        cpu_period=100_000, cpu_quota=50_000, memory_limit_in_bytes=256 * 1024 * 1024
    )
    s.rs.UpdateContainerResources(
        pb.UpdateContainerResourcesRequest(container_id=cid, linux=linux), timeout=10
    )
    assert s.status(cid).resources.linux == linux
    s.start(cid)
    linux.cpu_quota = 25_000
    s.rs.UpdateContainerResources(
        pb.UpdateContainerResourcesRequest(container_id=cid, linux=linux), timeout=10
    )
    assert s.status(cid).resources.linux.cpu_quota == 25_000
    s.stop(cid)
    # an EXITED container: containerd 1.6 updates its spec and answers OK, and so does crilab
    linux.cpu_quota = 10_000
    err = s.error_of(
        s.rs.UpdateContainerResources,
        pb.UpdateContainerResourcesRequest(container_id=cid, linux=linux),
    )
    assert err is None, err.details()
    status = s.status(cid)
    assert status.state == pb.CONTAINER_EXITED
    assert status.resources.linux.cpu_quota == 10_000


def test_reopen_container_log(rt: FakeRuntime, s: Stubs) -> None:
    cid = s.create(s.run_pod())
    s.start(cid)
    s.rs.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid), timeout=10)
    s.stop(cid)
    err = s.error_of(s.rs.ReopenContainerLog, pb.ReopenContainerLogRequest(container_id=cid))
    assert err is not None and err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not running" in err.details()


def test_runtime_config_and_status(rt: FakeRuntime, s: Stubs) -> None:
    config = pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr="10.88.0.0/16"))
    s.rs.UpdateRuntimeConfig(pb.UpdateRuntimeConfigRequest(runtime_config=config), timeout=10)
    assert rt.state.pod_cidr == "10.88.0.0/16"
    reply = s.rs.RuntimeConfig(pb.RuntimeConfigRequest(), timeout=10)
    assert reply.linux.cgroup_driver == pb.SYSTEMD
    plain = s.rs.Status(pb.StatusRequest(), timeout=10)
    assert not plain.info
    verbose = s.rs.Status(pb.StatusRequest(verbose=True), timeout=10)
    assert verbose.info
    info = json.loads(next(iter(verbose.info.values())))
    assert info["runtime"] == "crilab-fake"
    assert {c.type for c in verbose.status.conditions} == {"RuntimeReady", "NetworkReady"}


@pytest.mark.parametrize(
    ("method", "make_request", "hint"),
    [
        ("Exec", lambda c, p: pb.ExecRequest(container_id=c, cmd=["sh"]), "crictl exec -s"),
        ("Attach", lambda c, p: pb.AttachRequest(container_id=c), "crictl logs"),
        ("PortForward", lambda c, p: pb.PortForwardRequest(pod_sandbox_id=p), "ExecSync"),
        (
            "CheckpointContainer",
            lambda c, p: pb.CheckpointContainerRequest(container_id=c),
            "containerd",
        ),
    ],
)
def test_unimplemented_says_what_to_use_instead(
    rt: FakeRuntime, s: Stubs, method, make_request, hint
) -> None:
    pid = s.run_pod()
    cid = s.create(pid)
    s.start(cid)
    err = s.error_of(getattr(s.rs, method), make_request(cid, pid))
    assert err is not None and err.code() == grpc.StatusCode.UNIMPLEMENTED
    assert hint in err.details()
    assert err.details() != GRPC_DEFAULT_UNIMPLEMENTED


def test_every_rpc_is_served(rt: FakeRuntime, s: Stubs) -> None:
    """All 41 RPCs answer an empty request with something other than gRPC's default."""
    seen = []
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            request_class = message_factory.GetMessageClass(method.input_type)
            response_class = message_factory.GetMessageClass(method.output_type)
            path = f"/{service.full_name}/{method.name}"
            assert not method.client_streaming
            kind = s.channel.unary_stream if method.server_streaming else s.channel.unary_unary
            call = kind(
                path,
                request_serializer=request_class.SerializeToString,
                response_deserializer=response_class.FromString,
            )
            try:
                answer = call(request_class(), timeout=0.5 if method.server_streaming else 10)
                if method.server_streaming:
                    list(answer)
                code, details = grpc.StatusCode.OK, ""
            except grpc.RpcError as err:
                code, details = err.code(), err.details() or ""
            assert details != GRPC_DEFAULT_UNIMPLEMENTED, path
            assert code != grpc.StatusCode.INTERNAL, (path, details)
            seen.append((method.name, code))
    assert len(seen) == 41
    # an empty request is a mistake for the calls that need an ID, answered as such
    codes = dict(seen)
    assert codes["Version"] == grpc.StatusCode.OK
    assert codes["ListContainers"] == grpc.StatusCode.OK
    assert codes["StartContainer"] == grpc.StatusCode.INVALID_ARGUMENT
    assert codes["GetContainerEvents"] == grpc.StatusCode.DEADLINE_EXCEEDED  # a stream that waits


# -- reflection and health -------------------------------------------------------------------


def test_reflection_lists_the_services(rt: FakeRuntime, s: Stubs) -> None:
    db = ProtoReflectionDescriptorDatabase(s.channel)
    services = set(db.get_services())
    assert {
        "runtime.v1.RuntimeService",
        "runtime.v1.ImageService",
        "grpc.health.v1.Health",
    } <= services
    runtime = db.FindFileContainingSymbol("runtime.v1.RuntimeService")
    assert runtime.package == "runtime.v1"


@pytest.mark.parametrize("service", ["", "runtime.v1.RuntimeService", "runtime.v1.ImageService"])
def test_health_is_serving(rt: FakeRuntime, s: Stubs, service: str) -> None:
    health = health_pb2_grpc.HealthStub(s.channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
