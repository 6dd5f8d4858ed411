"""A kubelet-style CRI client: ``connect()`` and ``Client``.

Modelled on the kubelet's ``remote_runtime.go`` / ``remote_image.go``: dial
the endpoint with a timeout, raise the message limit to 16 MiB, check that the
runtime speaks ``runtime.v1`` (one ``Version`` call), then make every call with a
deadline. It uses only CRI calls, so it works unchanged against containerd,
CRI-O or crilab's ``FakeRuntime``::

    rt = crilab.FakeRuntime(images=["busybox"])
    client = crilab.connect(rt.endpoint)
    pod_id = client.run_pod_sandbox(pod_config("web"))

Errors from the runtime are raised as ``grpc.RpcError`` unchanged: the status
code *is* the lesson (``crilab.explain(err)`` says what it means).
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import grpc

from .endpoints import Endpoint, parse
from .serving import MAX_MESSAGE_BYTES
from .stubs import api_pb2, api_pb2_grpc

__all__ = [
    "ENDPOINT_ENV",
    "Client",
    "EventStream",
    "IncompatibleRuntime",
    "RuntimeUnavailable",
    "connect",
]

#: The variable crictl reads for its default endpoint; crilab reads it too.
ENDPOINT_ENV = "CONTAINER_RUNTIME_ENDPOINT"
#: The only CRI API version this client speaks (the kubelet dropped v1alpha2 in 1.26).
API_VERSION = "v1"

_HOW_TO_GET_ONE = (
    "To get a runtime: in Python, rt = crilab.FakeRuntime(); client = crilab.connect(rt.endpoint); "
    "in a shell, run `crilab serve` and use the endpoint it prints; or set "
    f"{ENDPOINT_ENV}=unix:///run/containerd/containerd.sock for a real containerd."
)

CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    # The kubelet raises the receive limit to 16 MiB (grpc's default is 4 MiB):
    # a node with many containers sends big ListContainers replies.
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # A runtime is local: never send its traffic through $http_proxy.
    ("grpc.enable_http_proxy", 0),
)


class RuntimeUnavailable(ConnectionError):
    """No usable CRI runtime at the endpoint (or no endpoint at all), with what to do."""

    def __init__(self, message: str, endpoint: str = "") -> None:
        super().__init__(message)
        self.endpoint = endpoint


class IncompatibleRuntime(RuntimeUnavailable):
    """The runtime answers, but not with the ``runtime.v1`` API this client speaks."""

    def __init__(self, message: str, endpoint: str = "", api_version: str = "") -> None:
        super().__init__(message, endpoint)
        self.api_version = api_version


# -- connecting ------------------------------------------------------------------


def connect(
    endpoint: str | None = None, *, timeout: float = 5.0, call_timeout: float = 10.0
) -> Client:
    """Dial a CRI runtime and check it speaks ``runtime.v1``, as the kubelet does at start.

    ``endpoint``: ``unix:///abs/path``, ``unix:/abs``, ``/abs`` or ``tcp://host:port``;
    default ``$CONTAINER_RUNTIME_ENDPOINT`` (crictl's variable). ``timeout`` bounds the
    dial and the version check; ``call_timeout`` is every later call's deadline.
    Failing here, rather than at the first real call, names the endpoint in the error.
    A unix socket that is missing, or that this user may not open, fails at once: no
    dial could succeed, so waiting out ``timeout`` would only delay the same answer.
    """
    target = _resolve(endpoint)
    if target.is_unix:
        problem = _unix_socket_problem(target.path)
        if problem:
            raise RuntimeUnavailable(
                f"no CRI runtime at {target.uri}: {problem}. {_HOW_TO_GET_ONE}", target.uri
            )
    channel = grpc.insecure_channel(target.grpc_target, options=list(CHANNEL_OPTIONS))
    try:
        _wait_ready(channel, target, timeout)
        _check_version(api_pb2_grpc.RuntimeServiceStub(channel), target, timeout)
    except BaseException:
        channel.close()
        raise
    return Client(channel, target.uri, call_timeout=call_timeout)


def _resolve(endpoint: str | None) -> Endpoint:
    text = endpoint if endpoint is not None else os.environ.get(ENDPOINT_ENV, "")
    if not text.strip():
        raise RuntimeUnavailable(
            f"no CRI endpoint given and ${ENDPOINT_ENV} is not set. " + _HOW_TO_GET_ONE
        )
    return parse(text)


def _wait_ready(channel: grpc.Channel, target: Endpoint, timeout: float) -> None:
    """Block until the channel connects: a dial with a deadline, like grpc.DialContext."""
    ready = grpc.channel_ready_future(channel)
    try:
        ready.result(timeout=timeout)
    except grpc.FutureTimeoutError:
        ready.cancel()
        raise RuntimeUnavailable(
            f"no CRI runtime answered at {target.uri} within {timeout:g}s: "
            f"{_why_not_listening(target)}. {_HOW_TO_GET_ONE}",
            target.uri,
        ) from None


def _unix_socket_problem(path: str) -> str:
    """Why no dial to ``path`` can work (missing, not a socket, not ours), or ""."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return f"there is no socket at {path} (is the runtime running? is the path right?)"
    except PermissionError:
        return (
            f"permission denied on a directory above {path} (a real runtime's socket is "
            "root's: use sudo)"
        )
    except OSError as err:  # e.g. a path through a regular file (ENOTDIR)
        return f"cannot use {path}: {err.strerror}"
    if not stat.S_ISSOCK(info.st_mode):
        return f"{path} is not a socket (a typo in the path? a runtime's socket ends in .sock)"
    if not os.access(path, os.R_OK | os.W_OK):
        return f"permission denied on {path} (a real runtime's socket is root's: use sudo)"
    return ""


def _why_not_listening(target: Endpoint) -> str:
    """A guess at why the dial failed within its timeout."""
    if not target.is_unix:
        return f"nothing is listening on port {target.port} of {target.host}, or it is firewalled"
    return _unix_socket_problem(target.path) or (
        f"the socket {target.path} exists but nothing accepts connections on it (stale: "
        "left by a runtime that stopped? start the runtime again)"
    )


def _check_version(stub: api_pb2_grpc.RuntimeServiceStub, target: Endpoint, timeout: float) -> None:
    """One ``Version`` call: the runtime must answer it with ``runtime_api_version`` "v1".

    The kubelet checks in two steps: its remote client validates the connection with an
    empty ``VersionRequest{}`` (cri-client's ``validateServiceConnection``: an answer
    at all means runtime.v1 is served), then the kuberuntime manager calls ``Version``
    with "0.1.0" and checks the reply's ``version`` field. crilab sends "v1", as
    ``crictl version`` does, and checks ``runtime_api_version``, the field that names
    the CRI API the runtime speaks.
    """
    try:
        reply = stub.Version(api_pb2.VersionRequest(version=API_VERSION), timeout=timeout)
    except grpc.RpcError as err:
        code = err.code() if isinstance(err, grpc.Call) else None
        if code == grpc.StatusCode.UNIMPLEMENTED:
            raise IncompatibleRuntime(
                f"the server at {target.uri} does not implement runtime.v1.RuntimeService "
                f"(Version answered UNIMPLEMENTED): it is not a CRI runtime, or an old one "
                f"that speaks only an older CRI API such as runtime.v1alpha2. crilab needs "
                f"runtime.v1 (containerd 1.6 or newer, a current CRI-O). {_HOW_TO_GET_ONE}",
                target.uri,
            ) from err
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise RuntimeUnavailable(
                f"the runtime at {target.uri} did not answer Version ({code.name}: "
                f"{err.details()}). {_HOW_TO_GET_ONE}",
                target.uri,
            ) from err
        raise  # any other status is the runtime's own answer: keep it unchanged
    if reply.runtime_api_version != API_VERSION:
        raise IncompatibleRuntime(
            f"the runtime at {target.uri} ({reply.runtime_name} {reply.runtime_version}) speaks "
            f"CRI API {reply.runtime_api_version or '(empty)'!s}, but crilab and current kubelets "
            f"need {API_VERSION}: upgrade the runtime (containerd 1.6 or newer, or a current "
            "CRI-O).",
            target.uri,
            reply.runtime_api_version,
        )


# -- filters and states ------------------------------------------------------------

State = int | str | None


def _enum_value(enum: Any, value: int | str, prefix: str) -> int:
    """An enum value from an int or a forgiving name ("RUNNING", "container_running")."""
    if isinstance(value, int):
        enum.Name(value)  # ValueError for a number the enum does not have
        return value
    wanted = str(value).upper().replace("-", "_").replace("_", "")
    for name, number in enum.items():
        if wanted in (name.replace("_", ""), name.removeprefix(prefix).replace("_", "")):
            return number
    names = ", ".join(n.removeprefix(prefix) for n, _ in enum.items())
    raise ValueError(f"unknown state {value!r}; use one of {names} (or the {prefix}* names)")


def container_state(value: int | str) -> int:
    """``api_pb2.ContainerState`` from ``2``, ``"EXITED"`` or ``"CONTAINER_EXITED"``."""
    return _enum_value(api_pb2.ContainerState, value, "CONTAINER_")


def pod_state(value: int | str) -> int:
    """``api_pb2.PodSandboxState`` from ``0``, ``"READY"`` or ``"SANDBOX_NOTREADY"``."""
    return _enum_value(api_pb2.PodSandboxState, value, "SANDBOX_")


def _pod_filter(
    state: State, labels: Mapping[str, str] | None, id: str
) -> api_pb2.PodSandboxFilter | None:
    if state is None and not labels and not id:
        return None  # no filter at all: the runtime lists everything
    flt = api_pb2.PodSandboxFilter(id=id, label_selector=dict(labels or {}))
    if state is not None:
        flt.state.state = pod_state(state)
    return flt


def _container_filter(
    pod_id: str, state: State, labels: Mapping[str, str] | None, id: str
) -> api_pb2.ContainerFilter | None:
    if state is None and not labels and not id and not pod_id:
        return None
    flt = api_pb2.ContainerFilter(id=id, pod_sandbox_id=pod_id, label_selector=dict(labels or {}))
    if state is not None:
        flt.state.state = container_state(state)
    return flt


# -- the event stream --------------------------------------------------------------


class EventStream:
    """``GetContainerEvents`` as an iterator that you can stop.

    ``close()`` or ``cancel()`` (from any thread) cancels the call: iteration then
    ends quietly instead of raising CANCELLED, since you asked for it. Any other
    error is raised unchanged. ``.call`` is the underlying grpc call.
    """

    def __init__(self, call: Any) -> None:
        self.call = call
        self._stopped = threading.Event()

    def __iter__(self) -> Iterator[api_pb2.ContainerEventResponse]:
        return self

    def __next__(self) -> api_pb2.ContainerEventResponse:
        try:
            return next(self.call)
        except grpc.RpcError as err:
            if self._stopped.is_set() and err.code() == grpc.StatusCode.CANCELLED:
                raise StopIteration from None
            raise

    def cancel(self) -> bool:
        """Cancel the stream (the server sees its context end); safe to call twice."""
        self._stopped.set()
        return self.call.cancel()

    close = cancel

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


# -- the client --------------------------------------------------------------------


class Client:
    """Pythonic CRI calls over one channel; every call has a deadline.

    ``runtime`` and ``images`` are the raw generated stubs, for anything the
    methods do not cover. Each method takes ``timeout=`` to override
    ``call_timeout`` and raises ``grpc.RpcError`` unchanged.
    """

    def __init__(
        self,
        channel: grpc.Channel,
        endpoint: str,
        *,
        call_timeout: float = 10.0,
        pull_timeout: float = 300.0,
    ) -> None:
        self.channel = channel
        self.endpoint = endpoint
        self.call_timeout = call_timeout
        #: PullImage downloads layers; the kubelet sets no deadline on it at all.
        self.pull_timeout = pull_timeout
        self.runtime = api_pb2_grpc.RuntimeServiceStub(channel)
        self.images = api_pb2_grpc.ImageServiceStub(channel)

    def _t(self, timeout: float | None) -> float:
        return self.call_timeout if timeout is None else timeout

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        """Close the channel (a runtime is left running)."""
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<crilab.Client {self.endpoint}>"

    # -- runtime ---------------------------------------------------------------

    def version(self, *, timeout: float | None = None) -> api_pb2.VersionResponse:
        """``Version``, sending "v1" as ``crictl version`` does."""
        return self.runtime.Version(
            api_pb2.VersionRequest(version=API_VERSION), timeout=self._t(timeout)
        )

    def status(
        self, verbose: bool = False, *, timeout: float | None = None
    ) -> api_pb2.StatusResponse:
        """RuntimeReady / NetworkReady conditions (what ``crictl info`` shows)."""
        return self.runtime.Status(api_pb2.StatusRequest(verbose=verbose), timeout=self._t(timeout))

    # -- pod sandboxes ---------------------------------------------------------

    def run_pod_sandbox(
        self,
        config: api_pb2.PodSandboxConfig,
        runtime_handler: str = "",
        *,
        timeout: float | None = None,
    ) -> str:
        """Create and start a pod sandbox; returns its ID."""
        request = api_pb2.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        return self.runtime.RunPodSandbox(request, timeout=self._t(timeout)).pod_sandbox_id

    def stop_pod_sandbox(self, pod_id: str, *, timeout: float | None = None) -> None:
        self.runtime.StopPodSandbox(
            api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=self._t(timeout)
        )

    def remove_pod_sandbox(self, pod_id: str, *, timeout: float | None = None) -> None:
        self.runtime.RemovePodSandbox(
            api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=self._t(timeout)
        )

    def pod_sandbox_status(
        self, pod_id: str, verbose: bool = False, *, timeout: float | None = None
    ) -> api_pb2.PodSandboxStatusResponse:
        """The whole response: ``.status`` and, when verbose, the runtime's ``.info``."""
        request = api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose)
        return self.runtime.PodSandboxStatus(request, timeout=self._t(timeout))

    def list_pod_sandbox(
        self,
        state: State = None,
        labels: Mapping[str, str] | None = None,
        id: str = "",
        *,
        timeout: float | None = None,
    ) -> list[api_pb2.PodSandbox]:
        """Pods matching all given filters (``state`` e.g. "READY"); the runtime filters."""
        request = api_pb2.ListPodSandboxRequest(filter=_pod_filter(state, labels, id))
        return list(self.runtime.ListPodSandbox(request, timeout=self._t(timeout)).items)

    # -- containers ------------------------------------------------------------

    def create_container(
        self,
        pod_id: str,
        config: api_pb2.ContainerConfig,
        sandbox_config: api_pb2.PodSandboxConfig | None = None,
        *,
        timeout: float | None = None,
    ) -> str:
        """Create (not start) a container in a pod; returns its ID.

        The kubelet always sends the pod's config too; real runtimes may need it
        (e.g. for the log directory), so pass the one you gave ``run_pod_sandbox``.
        """
        request = api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=sandbox_config
        )
        return self.runtime.CreateContainer(request, timeout=self._t(timeout)).container_id

    def start_container(self, container_id: str, *, timeout: float | None = None) -> None:
        self.runtime.StartContainer(
            api_pb2.StartContainerRequest(container_id=container_id), timeout=self._t(timeout)
        )

    def stop_container(
        self, container_id: str, timeout_seconds: int = 0, *, timeout: float | None = None
    ) -> None:
        """Stop with a grace period of ``timeout_seconds`` (0: kill at once).

        The deadline is ``call_timeout + timeout_seconds``, as in the kubelet, so
        the grace period never eats the time the runtime needs to answer.
        """
        request = api_pb2.StopContainerRequest(container_id=container_id, timeout=timeout_seconds)
        self.runtime.StopContainer(request, timeout=self._t(timeout) + timeout_seconds)

    def remove_container(self, container_id: str, *, timeout: float | None = None) -> None:
        self.runtime.RemoveContainer(
            api_pb2.RemoveContainerRequest(container_id=container_id), timeout=self._t(timeout)
        )

    def container_status(
        self, container_id: str, verbose: bool = False, *, timeout: float | None = None
    ) -> api_pb2.ContainerStatus:
        """The ``ContainerStatus`` (state, exit code, log path...); verbose info is dropped."""
        request = api_pb2.ContainerStatusRequest(container_id=container_id, verbose=verbose)
        return self.runtime.ContainerStatus(request, timeout=self._t(timeout)).status

    def list_containers(
        self,
        pod_id: str = "",
        state: State = None,
        labels: Mapping[str, str] | None = None,
        id: str = "",
        *,
        timeout: float | None = None,
    ) -> list[api_pb2.Container]:
        """Containers matching all given filters (``state`` e.g. "RUNNING")."""
        request = api_pb2.ListContainersRequest(filter=_container_filter(pod_id, state, labels, id))
        return list(self.runtime.ListContainers(request, timeout=self._t(timeout)).containers)

    def exec_sync(
        self,
        container_id: str,
        cmd: list[str],
        timeout_seconds: int = 0,
        *,
        timeout: float | None = None,
    ) -> api_pb2.ExecSyncResponse:
        """Run ``cmd`` in a running container and wait: stdout, stderr, exit_code.

        ``timeout_seconds`` is the runtime's limit for the command; the call's
        deadline is ``call_timeout + timeout_seconds``, as in the kubelet.
        """
        request = api_pb2.ExecSyncRequest(
            container_id=container_id, cmd=list(cmd), timeout=timeout_seconds
        )
        return self.runtime.ExecSync(request, timeout=self._t(timeout) + timeout_seconds)

    def container_events(self, *, timeout: float | None = None) -> EventStream:
        """Subscribe to container events (created, started, stopped, deleted).

        A server stream with no deadline by default (it is meant to run for as long
        as you watch). Stop it with ``.close()`` / ``.cancel()`` or a ``with`` block;
        otherwise iteration blocks waiting for the next event::

            with client.container_events() as events:
                for event in events:
                    ...
        """
        return EventStream(
            self.runtime.GetContainerEvents(api_pb2.GetEventsRequest(), timeout=timeout)
        )

    # -- stats -----------------------------------------------------------------

    def container_stats(
        self, container_id: str, *, timeout: float | None = None
    ) -> api_pb2.ContainerStats:
        request = api_pb2.ContainerStatsRequest(container_id=container_id)
        return self.runtime.ContainerStats(request, timeout=self._t(timeout)).stats

    def list_container_stats(
        self,
        pod_id: str = "",
        labels: Mapping[str, str] | None = None,
        id: str = "",
        *,
        timeout: float | None = None,
    ) -> list[api_pb2.ContainerStats]:
        flt = None
        if pod_id or labels or id:
            flt = api_pb2.ContainerStatsFilter(
                id=id, pod_sandbox_id=pod_id, label_selector=dict(labels or {})
            )
        request = api_pb2.ListContainerStatsRequest(filter=flt)
        return list(self.runtime.ListContainerStats(request, timeout=self._t(timeout)).stats)

    # -- images ----------------------------------------------------------------

    def pull_image(
        self,
        ref: str,
        sandbox_config: api_pb2.PodSandboxConfig | None = None,
        *,
        timeout: float | None = None,
    ) -> str:
        """Pull ``ref``; returns the image reference the runtime stored (its ID).

        Default deadline: ``pull_timeout`` (300 s), not ``call_timeout``: a real pull
        downloads layers (the kubelet puts no deadline on PullImage at all).
        """
        request = api_pb2.PullImageRequest(
            image=api_pb2.ImageSpec(image=ref), sandbox_config=sandbox_config
        )
        deadline = self.pull_timeout if timeout is None else timeout
        return self.images.PullImage(request, timeout=deadline).image_ref

    def image_status(self, ref: str, *, timeout: float | None = None) -> api_pb2.Image | None:
        """The ``Image``, or ``None`` when the runtime does not have it.

        A missing image is not an error in CRI: ImageStatus answers OK with no image.
        """
        request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref))
        reply = self.images.ImageStatus(request, timeout=self._t(timeout))
        return reply.image if reply.HasField("image") else None

    def list_images(self, ref: str = "", *, timeout: float | None = None) -> list[api_pb2.Image]:
        flt = api_pb2.ImageFilter(image=api_pb2.ImageSpec(image=ref)) if ref else None
        request = api_pb2.ListImagesRequest(filter=flt)
        return list(self.images.ListImages(request, timeout=self._t(timeout)).images)

    def remove_image(self, ref: str, *, timeout: float | None = None) -> None:
        self.images.RemoveImage(
            api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=self._t(timeout)
        )

    def image_fs_info(self, *, timeout: float | None = None) -> api_pb2.ImageFsInfoResponse:
        return self.images.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=self._t(timeout))

    def ensure_image(self, ref: str, *, timeout: float | None = None) -> str:
        """The image's ID, pulling it only if the runtime does not have it yet.

        This is the kubelet's ``imagePullPolicy: IfNotPresent``: ImageStatus first,
        PullImage only when it is missing. A pull costs a registry round trip (and
        rate limits), so a node never pulls what it already has.
        """
        image = self.image_status(ref, timeout=timeout)
        if image is not None:
            return image.id
        return self.pull_image(ref, timeout=timeout)

    # -- logs --------------------------------------------------------------------

    def logs(
        self,
        container_id: str,
        *,
        stream: str | None = None,
        tail: int | None = None,
        timeout: float | None = None,
    ) -> list[str]:
        """The container's output lines, like ``crictl logs``.

        CRI has no logs RPC: the runtime writes ``<time> <stream> <F|P> <text>`` lines
        to ``ContainerStatus.log_path`` and readers open that file. So this works only
        on the machine the runtime runs on (and real runtimes' logs are root's).
        ``stream``: "stdout" or "stderr" only; ``tail``: the last N lines.
        """
        path = self.container_status(container_id, timeout=timeout).log_path
        if not path:
            raise FileNotFoundError(f"container {container_id} has no log_path (none was set)")
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                lines = parse_cri_log(handle, stream=stream)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"log file {path} of container {container_id} does not exist here: logs() reads "
                "the file directly, so it works only on the runtime's own machine"
            ) from None
        return lines[-tail:] if tail else lines


def parse_cri_log(lines: Iterator[str] | list[str], *, stream: str | None = None) -> list[str]:
    """Text lines from CRI log-format records, joining partial (``P``) ones per stream."""
    out: list[str] = []
    pending: dict[str, str] = {}
    for record in lines:
        parts = record.rstrip("\n").split(" ", 3)
        if len(parts) < 3:
            continue  # not a CRI log record
        if len(parts) == 3:
            parts.append("")
        _, which, tag, text = parts
        if tag not in ("F", "P"):  # no tag: an old-style full line
            tag, text = "F", f"{tag} {text}" if text else tag
        if stream is not None and which != stream:
            continue
        text = pending.pop(which, "") + text
        if tag == "P":
            pending[which] = text
        else:
            out.append(text)
    out.extend(pending.values())  # a partial line still being written
    return out
