"""The gRPC face of the fake runtime: protobuf requests in, state calls, protobuf out.

Thin on purpose. Each RPC method unpacks its request, calls ``RuntimeState``
and wraps the answer. Domain errors become gRPC status codes in exactly one
place, ``_abort_with``, applied to every RPC by ``_translating``, which also
checks every answer and every stream message against the 16 MiB message limit
(grpc's own check fails the call with no advice, after the handler returned).
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from ..serving import MAX_MESSAGE_BYTES, long_call
from ..stubs import api_pb2, api_pb2_grpc
from . import stats
from .errors import CRIError, ResourceExhausted, Unimplemented
from .state import RuntimeState

log = logging.getLogger(__name__)

#: How many items one message of a Stream* RPC carries at most ...
STREAM_CHUNK = 1000
#: ... and how many bytes: a chunk of big containers (many labels) stays far below
#: the 16 MiB message limit, which a count alone cannot promise.
STREAM_CHUNK_BYTES = 4 * 1024 * 1024


#: Longest status message sent, in UTF-8 bytes. The message travels in a trailer, where
#: grpc percent-encodes non-ASCII (up to 3x) and clients refuse trailers past 8-16 KiB:
#: an error echoing a 1 MiB ID would reach the client as RESOURCE_EXHAUSTED, not NOT_FOUND.
MAX_DETAILS_BYTES = 2048


def _bounded(message: str) -> str:
    """``message``, its middle cut out when it is too long (the advice is at the end)."""
    data = message.encode("utf-8", errors="replace")
    if len(data) <= MAX_DETAILS_BYTES:
        return message
    head = data[:1400].decode("utf-8", errors="ignore")
    tail = data[-500:].decode("utf-8", errors="ignore")
    return f"{head} …[{len(data) - 1900} bytes cut]… {tail}"


def _abort_with(context: grpc.ServicerContext, error: CRIError) -> None:
    context.abort(getattr(grpc.StatusCode, error.code), _bounded(error.message))


def _abandoned(context: grpc.ServicerContext) -> threading.Event:
    """An event set when the call ends early: the caller cancelled or its deadline passed."""
    gone = threading.Event()
    if not context.add_callback(gone.set):  # False: the call has ended already
        gone.set()
    return gone


#: What makes a single CRI object big, and what to do about it.
_BIG_OBJECT = (
    "What makes it that big is the labels and annotations it carries (and, with "
    "verbose, its info): keep them small. Kubernetes allows at most 256 KiB of "
    "annotations on an object"
)

_LIMIT = (
    f"the {MAX_MESSAGE_BYTES} byte (16 MiB) gRPC message limit that the kubelet and this "
    "runtime use"
)


def _too_big(method: str, size: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"the {method} answer would be {size} bytes, over {_LIMIT}, so it cannot be sent "
        f'(grpc itself would only say "Sent message larger than max"). {_BIG_OBJECT}'
    )


def _sized_when_built(method: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a method whose answers are checked against the limit where they are built
    (``_fitting``, ``_chunks``): sizing a reused List answer again on every call would
    cost an encode of it each time."""
    method._sized_when_built = True  # type: ignore[attr-defined]
    return method


def _translating(method: Callable[..., Any]) -> Callable[..., Any]:
    """Turn domain errors into status codes; anything else is a crilab bug (INTERNAL).

    Every unary answer is sized first (``ByteSize`` runs in C: well under a microsecond
    for most answers) unless the method sized it where it was built. Streams size their
    messages where they build them (``_chunks``; the state trims an event to fit).
    """
    name = method.__name__
    checked = not getattr(method, "_sized_when_built", False)

    def fail(context: grpc.ServicerContext, exc: Exception) -> None:
        if isinstance(exc, CRIError):
            _abort_with(context, exc)
        log.exception("bug in crilab's fake runtime while serving %s", method.__name__)
        context.abort(
            grpc.StatusCode.INTERNAL,
            _bounded(
                f"bug in crilab's fake runtime ({type(exc).__name__}: {exc}); please report it"
            ),
        )

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def streaming(self, request, context):
            try:
                yield from method(self, request, context)
            except Exception as exc:
                fail(context, exc)

        return streaming

    if not checked:

        @functools.wraps(method)
        def unary(self, request, context):
            try:
                return method(self, request, context)
            except Exception as exc:
                fail(context, exc)

        return unary

    @functools.wraps(method)
    def unary_checked(self, request, context):
        try:
            response = method(self, request, context)
            size = response.ByteSize()
            if size > MAX_MESSAGE_BYTES:
                raise _too_big(name, size)
            return response
        except Exception as exc:
            fail(context, exc)

    return unary_checked


def _translate_all(cls: type) -> type:
    for name, member in list(vars(cls).items()):
        if name[:1].isupper() and callable(member):
            setattr(cls, name, _translating(member))
    return cls


def _item_name(item: Any) -> str:
    """``"PodSandboxStats 4f2a..."``: an item's type and (short) ID, for an error message."""
    for path in ("id", "attributes.id", "pod_sandbox_id"):
        value: Any = item
        for part in path.split("."):
            value = getattr(value, part, None)
        if isinstance(value, str) and value:
            return f"{type(item).__name__} {value[:13]}"
    return type(item).__name__


def _item_too_big(item: Any, cost: int, method: str, stream: str) -> ResourceExhausted:
    return ResourceExhausted(
        f"one item of the {method} answer, {_item_name(item)}, is {cost} bytes by itself, "
        f"over {_LIMIT}: no message can carry it, so {stream} cannot send it either. "
        f"{_BIG_OBJECT}; or leave this item out with a filter"
    )


def _chunks(
    items: list[Any],
    method: str,
    stream: str,
    size: int = STREAM_CHUNK,
    max_bytes: int = STREAM_CHUNK_BYTES,
) -> Iterator[list[Any]]:
    """``items`` in chunks under ``max_bytes``; an item no message can carry is an error."""
    chunk: list[Any] = []
    used = 0
    for item in items:
        cost = item.ByteSize() + 6  # + the field's tag and length prefix
        if cost > MAX_MESSAGE_BYTES - 16:  # the response's own framing is a few bytes more
            raise _item_too_big(item, cost, method, stream)
        if chunk and (len(chunk) >= size or used + cost > max_bytes):
            yield chunk
            chunk, used = [], 0
        chunk.append(item)
        used += cost
    if chunk:
        yield chunk


def _fitting(response: Any, method: str, stream: str, filters: str = "") -> Any:
    """``response``, unless it is over the message limit: then a RESOURCE_EXHAUSTED that
    says what to do (grpc's own error only says "Sent message larger than max")."""
    size = response.ByteSize()  # computed in C: cheap next to sending the bytes
    if size > MAX_MESSAGE_BYTES:
        for item in _items(response):  # (only on the way to an error)
            cost = item.ByteSize() + 6
            if cost > MAX_MESSAGE_BYTES - 16:
                raise _item_too_big(item, cost, method, stream)
        raise ResourceExhausted(
            f"the {method} answer would be {size} bytes, over the {MAX_MESSAGE_BYTES} byte "
            f"(16 MiB) gRPC message limit that the kubelet and this runtime use. "
            + (f"Ask for less with a filter ({filters}), or call " if filters else "Call ")
            + f"{stream}, which sends the same list in chunks of messages that each stay "
            "under the limit"
        )
    return response


def _items(response: Any) -> list[Any]:
    """The items of a List answer: its one repeated message field."""
    for descriptor, value in response.ListFields():
        if descriptor.is_repeated and descriptor.message_type is not None:
            return list(value)
    return []


class _Answers:
    """List answers reused for as long as the state they came from holds.

    The kubelet lists every second with the same filter, and building an answer
    copies every item into a new message: for 100 containers that costs more than the
    rest of the call. An answer is kept with the state generation read before it was
    built, so one built while the state changed is never served for the new state.
    Answers are shared between calls (and their records): read-only.
    """

    LIMIT = 16  # distinct filters kept; past it the kept ones are dropped
    #: Answers bigger than this are built each time: the kept ones stay within
    #: LIMIT x MAX_BYTES (16 MiB) on a small Binder, and a big answer costs far more to
    #: send than to build.
    MAX_BYTES = 1024 * 1024

    def __init__(self, generation: Callable[[], int]) -> None:
        self._generation = generation
        self._kept: dict[bytes, tuple[int, Any]] = {}

    def get(self, flt: Any, build: Callable[[], Any]) -> Any:
        generation = self._generation()
        key = b"" if flt is None else flt.SerializeToString(deterministic=True)
        kept = self._kept.get(key)
        if kept is not None and kept[0] == generation:
            return kept[1]
        answer = build()
        if answer.ByteSize() <= self.MAX_BYTES:  # in C, and only when built
            if len(self._kept) >= self.LIMIT:
                self._kept = {}
            self._kept[key] = (generation, answer)
        return answer


def _unimplemented(what: str) -> Unimplemented:
    return Unimplemented(what)


@_translate_all
class RuntimeServicer(api_pb2_grpc.RuntimeServiceServicer):
    """runtime.v1.RuntimeService over a ``RuntimeState``."""

    def __init__(self, state: RuntimeState) -> None:
        self.state = state
        self._pods = _Answers(lambda: state.pods_generation)
        self._containers = _Answers(lambda: state.containers_generation)

    # -- runtime ---------------------------------------------------------------

    def Version(self, request, context):
        return self.state.version()

    def Status(self, request, context):
        resp = api_pb2.StatusResponse()
        for kind in ("RuntimeReady", "NetworkReady"):
            resp.status.conditions.add(type=kind, status=True)
        for name in self.state.runtime_handlers:  # "" (the default) and "runc"
            resp.runtime_handlers.add(name=name, features=api_pb2.RuntimeHandlerFeatures())
        resp.features.supplemental_groups_policy = True
        if request.verbose:
            resp.info["config"] = (
                '{"runtime": "crilab-fake", "note": "a fake CRI runtime for learning; '
                'no real containers run", "cgroupDriver": "systemd"}'
            )
        return resp

    def RuntimeConfig(self, request, context):
        resp = api_pb2.RuntimeConfigResponse()
        resp.linux.cgroup_driver = api_pb2.SYSTEMD
        return resp

    def UpdateRuntimeConfig(self, request, context):
        self.state.pod_cidr = request.runtime_config.network_config.pod_cidr
        return api_pb2.UpdateRuntimeConfigResponse()

    # -- pod sandboxes ---------------------------------------------------------

    def RunPodSandbox(self, request, context):
        pod_id = self.state.run_pod_sandbox(request.config, request.runtime_handler)
        return api_pb2.RunPodSandboxResponse(pod_sandbox_id=pod_id)

    def StopPodSandbox(self, request, context):
        self.state.stop_pod_sandbox(request.pod_sandbox_id)
        return api_pb2.StopPodSandboxResponse()

    def RemovePodSandbox(self, request, context):
        self.state.remove_pod_sandbox(request.pod_sandbox_id)
        return api_pb2.RemovePodSandboxResponse()

    def PodSandboxStatus(self, request, context):
        return self.state.pod_sandbox_status(request.pod_sandbox_id, request.verbose)

    @_sized_when_built
    def ListPodSandbox(self, request, context):
        flt = request.filter if request.HasField("filter") else None
        return self._pods.get(
            flt,
            lambda: _fitting(
                api_pb2.ListPodSandboxResponse(items=self.state.list_pod_sandbox(flt)),
                "ListPodSandbox",
                "StreamPodSandboxes",
                "id, state, label_selector",
            ),
        )

    @_sized_when_built
    def StreamPodSandboxes(self, request, context):
        flt = request.filter if request.HasField("filter") else None
        for chunk in _chunks(
            self.state.list_pod_sandbox(flt), "ListPodSandbox", "StreamPodSandboxes"
        ):
            yield api_pb2.StreamPodSandboxesResponse(pod_sandboxes=chunk)

    def UpdatePodSandboxResources(self, request, context):
        self.state.update_pod_sandbox_resources(request.pod_sandbox_id)
        return api_pb2.UpdatePodSandboxResourcesResponse()

    # -- containers ------------------------------------------------------------

    def CreateContainer(self, request, context):
        cid = self.state.create_container(request.pod_sandbox_id, request.config)
        return api_pb2.CreateContainerResponse(container_id=cid)

    def StartContainer(self, request, context):
        self.state.start_container(request.container_id)
        return api_pb2.StartContainerResponse()

    @long_call(
        "wait for the StopContainer calls to end their grace period, or stop with a "
        "shorter timeout (crictl stop --timeout 0 CONTAINER)"
    )
    def StopContainer(self, request, context):
        self.state.stop_container(
            request.container_id, request.timeout, abandoned=_abandoned(context)
        )
        return api_pb2.StopContainerResponse()

    def RemoveContainer(self, request, context):
        self.state.remove_container(request.container_id)
        return api_pb2.RemoveContainerResponse()

    @_sized_when_built
    def ListContainers(self, request, context):
        flt = request.filter if request.HasField("filter") else None
        return self._containers.get(
            flt,
            lambda: _fitting(
                api_pb2.ListContainersResponse(containers=self.state.list_containers(flt)),
                "ListContainers",
                "StreamContainers",
                "id, pod_sandbox_id, state, label_selector",
            ),
        )

    @_sized_when_built
    def StreamContainers(self, request, context):
        flt = request.filter if request.HasField("filter") else None
        for chunk in _chunks(self.state.list_containers(flt), "ListContainers", "StreamContainers"):
            yield api_pb2.StreamContainersResponse(containers=chunk)

    def ContainerStatus(self, request, context):
        return self.state.container_status(request.container_id, request.verbose)

    def UpdateContainerResources(self, request, context):
        linux = request.linux if request.HasField("linux") else None
        self.state.update_container_resources(request.container_id, linux)
        return api_pb2.UpdateContainerResourcesResponse()

    def ReopenContainerLog(self, request, context):
        self.state.reopen_container_log(request.container_id)
        return api_pb2.ReopenContainerLogResponse()

    @long_call(
        "wait for the ExecSync calls to finish, or give them a timeout "
        "(crictl exec -s --timeout 5 ...)"
    )
    def ExecSync(self, request, context):
        return self.state.exec_sync(
            request.container_id, list(request.cmd), request.timeout, abandoned=_abandoned(context)
        )

    def Exec(self, request, context):
        self._check_running(request.container_id)
        raise Unimplemented(
            "streaming Exec is not served by crilab's fake runtime (it would need an HTTP "
            "streaming server). Use ExecSync instead: crictl exec -s CONTAINER CMD, or "
            "client.exec_sync(container_id, [...])"
        )

    def Attach(self, request, context):
        self._check_running(request.container_id)
        raise Unimplemented(
            "Attach is not served by crilab's fake runtime (a simulated process has no "
            "terminal). Read the container's output with crictl logs CONTAINER instead"
        )

    def PortForward(self, request, context):
        self.state.pod_sandbox_status(request.pod_sandbox_id)
        raise Unimplemented(
            "PortForward is not served by crilab's fake runtime: its containers open no real "
            "ports. Use ExecSync to look inside a container instead"
        )

    def _check_running(self, container_id: str) -> None:
        status = self.state.container_status(container_id).status
        if status.state != api_pb2.CONTAINER_RUNNING:
            from .errors import FailedPrecondition

            raise FailedPrecondition(
                f"container {status.id[:13]} is {api_pb2.ContainerState.Name(status.state)}: "
                "it must be running"
            )

    def CheckpointContainer(self, request, context):
        self.state.container_status(request.container_id)
        raise Unimplemented(
            "CheckpointContainer is not implemented, as in containerd 1.6 (checkpointing needs "
            "CRIU and a newer runtime; CRI-O and containerd 2.x can do it)"
        )

    @long_call(
        "cancel the event streams nobody reads: a `crictl events` left running, an "
        "events panel you no longer watch, a `client.container_events()` loop not left"
    )
    @_sized_when_built  # the state trims an event to fit the limit when it builds it
    def GetContainerEvents(self, request, context):
        with self.state.events.subscribe() as sub:
            context.add_callback(sub.close)  # the client went away: free the queue
            while context.is_active():
                event = sub.get(timeout=0.5)
                if event is not None:
                    yield event
                elif sub.closed:
                    return

    # -- stats -----------------------------------------------------------------

    def ContainerStats(self, request, context):
        return api_pb2.ContainerStatsResponse(
            stats=stats.container_stats(self.state, request.container_id)
        )

    @_sized_when_built
    def ListContainerStats(self, request, context):
        flt = request.filter if request.HasField("filter") else None
        return _fitting(
            api_pb2.ListContainerStatsResponse(stats=stats.list_container_stats(self.state, flt)),
            "ListContainerStats",
            "StreamContainerStats",
            "id, pod_sandbox_id, label_selector",
        )

    @_sized_when_built
    def StreamContainerStats(self, request, context):
        flt = request.filter if request.HasField("filter") else None
        for chunk in _chunks(
            stats.list_container_stats(self.state, flt),
            "ListContainerStats",
            "StreamContainerStats",
        ):
            yield api_pb2.StreamContainerStatsResponse(container_stats=chunk)

    def PodSandboxStats(self, request, context):
        return api_pb2.PodSandboxStatsResponse(
            stats=stats.pod_stats(self.state, request.pod_sandbox_id)
        )

    @_sized_when_built
    def ListPodSandboxStats(self, request, context):
        flt = request.filter if request.HasField("filter") else None
        return _fitting(
            api_pb2.ListPodSandboxStatsResponse(stats=stats.list_pod_stats(self.state, flt)),
            "ListPodSandboxStats",
            "StreamPodSandboxStats",
            "id, label_selector",
        )

    @_sized_when_built
    def StreamPodSandboxStats(self, request, context):
        flt = request.filter if request.HasField("filter") else None
        for chunk in _chunks(
            stats.list_pod_stats(self.state, flt), "ListPodSandboxStats", "StreamPodSandboxStats"
        ):
            yield api_pb2.StreamPodSandboxStatsResponse(pod_sandbox_stats=chunk)

    def ListMetricDescriptors(self, request, context):
        return api_pb2.ListMetricDescriptorsResponse(descriptors=stats.metric_descriptors())

    @_sized_when_built
    def ListPodSandboxMetrics(self, request, context):
        return _fitting(
            api_pb2.ListPodSandboxMetricsResponse(pod_metrics=stats.pod_metrics(self.state)),
            "ListPodSandboxMetrics",
            "StreamPodSandboxMetrics",
        )

    @_sized_when_built
    def StreamPodSandboxMetrics(self, request, context):
        for chunk in _chunks(
            stats.pod_metrics(self.state), "ListPodSandboxMetrics", "StreamPodSandboxMetrics"
        ):
            yield api_pb2.StreamPodSandboxMetricsResponse(pod_sandbox_metrics=chunk)


@_translate_all
class ImageServicer(api_pb2_grpc.ImageServiceServicer):
    """runtime.v1.ImageService over the same ``RuntimeState``."""

    def __init__(self, state: RuntimeState) -> None:
        self.state = state

    @_sized_when_built
    def ListImages(self, request, context):
        ref = request.filter.image.image if request.HasField("filter") else ""
        return _fitting(
            api_pb2.ListImagesResponse(images=self.state.list_images(ref)),
            "ListImages",
            "StreamImages",
            "image",
        )

    @_sized_when_built
    def StreamImages(self, request, context):
        ref = request.filter.image.image if request.HasField("filter") else ""
        for chunk in _chunks(self.state.list_images(ref), "ListImages", "StreamImages"):
            yield api_pb2.StreamImagesResponse(images=chunk)

    def ImageStatus(self, request, context):
        return self.state.image_status(request.image.image, request.verbose)

    def PullImage(self, request, context):
        return api_pb2.PullImageResponse(image_ref=self.state.pull_image(request.image.image))

    def RemoveImage(self, request, context):
        self.state.remove_image(request.image.image)
        return api_pb2.RemoveImageResponse()

    def ImageFsInfo(self, request, context):
        used, count = self.state.image_fs_usage()
        now = time.time_ns()
        resp = api_pb2.ImageFsInfoResponse()
        image_fs = resp.image_filesystems.add(timestamp=now)
        image_fs.fs_id.mountpoint = str(self.state.root / "images")
        image_fs.used_bytes.value = used
        image_fs.inodes_used.value = count * 100
        ctr_fs = resp.container_filesystems.add(timestamp=now)
        ctr_fs.fs_id.mountpoint = str(self.state.root / "containers")
        ctr_fs.used_bytes.value = 4096 * len(self.state.containers)
        ctr_fs.inodes_used.value = 10 * len(self.state.containers)
        return resp
