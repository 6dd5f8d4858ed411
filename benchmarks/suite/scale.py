"""Section ``scale``: listing 1k, 10k and 100k containers, in the state and over gRPC.

One ``FakeRuntime`` grows through the sizes: its ``RuntimeState`` gets
containers directly (``create_container``, the path the RPC takes), spread over
100 pods (with no event subscriber, no event is built: the runtime builds them only
for subscribers).
Container ``cK`` of each pod carries the kubelet's label
``io.kubernetes.container.name=cK``, so that selector matches exactly one
container per pod: 100 at every size. 100 containers are started and stopped
(EXITED) for the state filter. Over gRPC, ListContainers of every container
must fit the 16 MiB message limit (bigger answers fail with RESOURCE_EXHAUSTED,
as for the kubelet); ListContainers with the label selector (100 matches) is
what a kubelet asking for one container name pays at each size;
StreamContainers sends any size in chunks, and its total bytes are shown.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from typing import Any

import grpc

import crilab
from crilab.builders import container_config, pod_config
from crilab.serving import MAX_MESSAGE_BYTES
from crilab.stubs import api_pb2

from .common import (
    CALL_TIMEOUT,
    Settings,
    listen_address,
    open_channel,
    runtime_stub,
    scratch_dir,
    section_result,
    target,
    time_call,
)

PODS = 100
LABEL = "io.kubernetes.container.name"
SELECTED = "c5"  # one per pod: 100 matches at every size
EXITED_COUNT = 100
LABEL_LIMIT_MS = 5.0
PROBE = 200  # containers of each size created (and timed) on the real path
MIB = 1024 * 1024

COLUMNS = [
    ("containers", "containers", "d"),
    ("create_ms", "create_container ms", ".2f"),
    ("all_ms", "state: all ms", ".2f"),
    ("label_ms", "state: label (100) ms", ".3f"),
    ("exited_ms", "state: EXITED (100) ms", ".3f"),
    ("created_ms", "state: CREATED (rest) ms", ".2f"),
    ("list_mib", "ListContainers MiB", ".2f"),
    ("list_ms", "ListContainers ms", ".1f"),
    ("list_code", "ListContainers status", ""),
    ("list_label_ms", "ListContainers label (100) ms", ".2f"),
    ("stream_ms", "StreamContainers ms", ".1f"),
    ("stream_msgs", "stream messages", "d"),
    ("stream_mib", "stream MiB", ".2f"),
]


def _filter(**fields: Any) -> api_pb2.ContainerFilter:
    flt = api_pb2.ContainerFilter(label_selector=fields.get("labels", {}))
    if "state" in fields:
        flt.state.state = fields["state"]
    return flt


FILTERS = {
    "all_ms": None,
    "label_ms": _filter(labels={LABEL: SELECTED}),
    "exited_ms": _filter(state=api_pb2.CONTAINER_EXITED),
    "created_ms": _filter(state=api_pb2.CONTAINER_CREATED),
}
EXPECTED = {"label_ms": PODS, "exited_ms": EXITED_COUNT}


class Grower:
    """Adds containers to a RuntimeState round-robin over its pods, up to a total."""

    def __init__(self, state: Any) -> None:
        self.state = state
        root = state.root / "bench-logs"
        self.pods = [
            state.run_pod_sandbox(pod_config(f"pod{i}", log_directory=str(root / f"pod{i}")))
            for i in range(PODS)
        ]
        self.count = 0

    def grow(self, total: int, probe: int) -> float:
        """Create containers until there are ``total``; ms per create of the last ``probe``."""
        while self.count < total - probe:
            self._create_one()
        start = time.perf_counter()
        created = 0
        while self.count < total:
            self._create_one()
            created += 1
        return (time.perf_counter() - start) * 1e3 / max(created, 1)

    def _create_one(self) -> None:
        i = self.count
        name = f"c{i // PODS}"
        config = container_config(name, "busybox", labels={LABEL: name})
        cid = self.state.create_container(self.pods[i % PODS], config)
        if i % 10 == 1 and i < 10 * EXITED_COUNT:  # 100 EXITED ones, spread over the pods
            self.state.start_container(cid)
            self.state.stop_container(cid, 0)
        self.count += 1


def state_timings(state: Any, reps: int) -> dict[str, float]:
    """Median ms of list_containers with each filter (checking the match counts)."""
    out = {}
    for key, flt in FILTERS.items():
        found = len(state.list_containers(flt))
        if key in EXPECTED and found != EXPECTED[key]:
            raise AssertionError(f"{key}: matched {found}, expected {EXPECTED[key]}")
        heavy = flt is None or key == "created_ms"
        out[key] = time_call(lambda f=flt: state.list_containers(f), reps // 10 if heavy else reps)
        out[key] *= 1e3
    return out


def list_over_grpc(stub: Any, state: Any, reps: int) -> dict[str, Any]:
    """ListContainers (all): size in MiB and median time, or the status past 16 MiB."""
    size = api_pb2.ListContainersResponse(containers=state.list_containers()).ByteSize()
    request = api_pb2.ListContainersRequest()
    call = lambda: stub.ListContainers(request, timeout=CALL_TIMEOUT)  # noqa: E731
    if size <= MAX_MESSAGE_BYTES:
        return {"list_mib": size / MIB, "list_ms": time_call(call, reps) * 1e3, "list_code": "OK"}
    start = time.perf_counter()
    try:
        call()
        code = "OK (unexpected: over the limit)"
    except grpc.RpcError as err:
        code = err.code().name
    return {
        "list_mib": size / MIB,
        "list_ms": (time.perf_counter() - start) * 1e3,
        "list_code": code,
    }


def label_list_over_grpc(stub: Any, reps: int) -> dict[str, Any]:
    """ListContainers with the label selector (100 matches): median ms over gRPC."""
    request = api_pb2.ListContainersRequest(filter=FILTERS["label_ms"])
    found = len(stub.ListContainers(request, timeout=CALL_TIMEOUT).containers)
    if found != PODS:
        raise AssertionError(f"ListContainers with {LABEL}={SELECTED}: {found}, expected {PODS}")
    call = lambda: stub.ListContainers(request, timeout=CALL_TIMEOUT)  # noqa: E731
    return {"list_label_ms": time_call(call, reps) * 1e3}


def stream_over_grpc(stub: Any, total: int, reps: int) -> dict[str, Any]:
    """StreamContainers (all): median ms to receive every container, and the bytes sent."""
    request = api_pb2.StreamContainersRequest()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        got = 0
        for reply in stub.StreamContainers(request, timeout=CALL_TIMEOUT * 4):
            got += len(reply.containers)
        times.append(time.perf_counter() - start)
        if got != total:
            raise AssertionError(f"StreamContainers sent {got} of {total} containers")
    messages = size = 0
    for reply in stub.StreamContainers(request, timeout=CALL_TIMEOUT * 4):  # untimed: sizes
        messages += 1
        size += reply.ByteSize()
    return {
        "stream_ms": statistics.median(times) * 1e3,
        "stream_msgs": messages,
        "stream_mib": size / MIB,
    }


def measure_size(grower: Grower, stub: Any, total: int, settings: Settings) -> dict[str, Any]:
    print(f"  scale: {total} containers ...", flush=True)
    row: dict[str, Any] = {"containers": total, "create_ms": grower.grow(total, PROBE)}
    row.update(state_timings(grower.state, settings.pick(200, 40)))
    grpc_reps = 5 if total <= 10_000 else 3
    row.update(list_over_grpc(stub, grower.state, settings.pick(grpc_reps, 2)))
    row.update(label_list_over_grpc(stub, settings.pick(50, 10)))
    row.update(stream_over_grpc(stub, total, settings.pick(grpc_reps, 1)))
    return row


def run(settings: Settings) -> dict[str, Any]:
    sizes = settings.pick((1_000, 10_000, 100_000), (1_000, 10_000))
    rows = []
    with scratch_dir() as scratch:
        rt = crilab.FakeRuntime(listen_address("unix", scratch, "scale"), images=["busybox"])
        try:
            grower = Grower(rt.state)
            with contextlib.closing(open_channel(rt.endpoint)) as channel:
                stub = runtime_stub(channel)
                rows = [measure_size(grower, stub, total, settings) for total in sizes]
        finally:
            rt.stop()
    biggest = rows[-1]
    targets = [
        target(
            f"state label filter, 100 of {biggest['containers']} containers",
            biggest["label_ms"] if biggest["containers"] >= 100_000 else math.nan,
            LABEL_LIMIT_MS,
            "ms",
        )
    ]
    notes = [
        "state: RuntimeState.list_containers() in this process, median of repeated calls.",
        "gRPC: the in-process FakeRuntime over a unix socket; the client's and server's limit "
        "is 16 MiB per message.",
        f"ListContainers label (100): the filter {LABEL}={SELECTED} over gRPC, median of "
        "repeated calls (the answer holds the 100 matches at every size).",
        "stream MiB: the protobuf size of all StreamContainers messages together.",
        "create_container ms: the mean of the last 200 containers of each size (no event "
        "subscriber, so no event is built).",
    ]
    if biggest["containers"] < 100_000:
        notes.append("This run stopped below 100k containers: the 100k target is not judged.")
    return section_result(rows, COLUMNS, targets=targets, notes=notes)
