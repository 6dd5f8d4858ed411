"""The fake runtime's state: pods, containers and images, and the rules that move them.

No gRPC here: every method takes plain values or protobuf messages and returns
protobuf messages, raising ``errors.CRIError`` subclasses for mistakes. The
servicer maps those to status codes; tests and benchmarks call this directly.

State is kept as protobuf (the ``PodSandbox``/``Container`` list items and
their statuses are updated in place), so a List answer is a copy of stored
messages, not a rebuild from dicts. Filters use indexes (by state, pod and
label), never a scan of every container. One lock guards the maps and indexes;
no I/O and no sleeping happen under it. Container events are published under it
(publishing only appends to bounded queues), so they arrive in transition order.

Behaviour follows containerd 1.6 (observed), except that where containerd
answers UNKNOWN for a caller's mistake this answers the precise code
(ALREADY_EXISTS, FAILED_PRECONDITION); see docs/behaviour.md.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..stubs import api_pb2
from . import processes
from .errors import (
    AlreadyExists,
    CRIError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from .events import MAX_EVENT_BYTES, EventHub
from .ids import IdFactory, PrefixIndex
from .registry import ImageRecord, Registry, normalize
from .scheduler import MAX_DELAY, Scheduler, capped

CREATED = api_pb2.CONTAINER_CREATED
RUNNING = api_pb2.CONTAINER_RUNNING
EXITED = api_pb2.CONTAINER_EXITED
READY = api_pb2.SANDBOX_READY
NOTREADY = api_pb2.SANDBOX_NOTREADY

EXIT_KILLED = 137  # 128 + SIGKILL, what a runtime reports for a killed process
SETTLE_SECONDS = 1.0  # longest StopContainer waits for a just-started process's first step
EXIT_TERMINATED = 143  # 128 + SIGTERM

EXIT_START_ERROR = 128  # what containerd reports when the process could not be started
#: What containerd 1.6 puts before runc's words in such a container's status message.
START_ERROR_PREFIX = (
    "failed to create containerd task: failed to create shim task: OCI runtime create "
    "failed: runc create failed: unable to start container process: "
)
RUNTIME_HANDLERS = ("", "runc")  # "" is the default handler, runc, as in containerd's config

#: Where a trimmed event (one over the message limit) says what was left out.
EVENT_TRIMMED_NOTE = "crilab.event-trimmed"

log = logging.getLogger(__name__)

RUNTIME_NAME = "crilab-fake"
RUNTIME_VERSION = "0.1.0"
RUNTIME_API_VERSION = "v1"
KUBE_API_VERSION = "0.1.0"  # VersionResponse.version: the kubelet sends and expects this


def container_state_name(state: int) -> str:
    return api_pb2.ContainerState.Name(state)


def pod_state_name(state: int) -> str:
    return api_pb2.PodSandboxState.Name(state)


def _now() -> int:
    return time.time_ns()


def _require(value: object, what: str) -> None:
    if not value:
        raise InvalidArgument(f"{what} is required but empty; set it in the request")


@dataclass(eq=False)
class Pod:
    seq: int
    sandbox: api_pb2.PodSandbox  # the List item; its state is updated in place
    config: api_pb2.PodSandboxConfig
    ip: str
    containers: dict[str, None] = field(default_factory=dict)  # ordered set of IDs

    @property
    def id(self) -> str:
        return self.sandbox.id


@dataclass(eq=False)
class Container:
    seq: int
    item: api_pb2.Container  # the List item
    status: api_pb2.ContainerStatus
    config: api_pb2.ContainerConfig
    image: ImageRecord
    argv: list[str]
    log: processes.CRILogWriter | None
    run: _Run | None = None
    ctx: processes.ProcessContext | None = None  # one per container: files persist
    own_log: bool = False  # the runtime chose the log's directory: it deletes the log too
    starting: bool = False  # a StartContainer is opening the log (outside the lock)
    execs: set[_Exec] = field(default_factory=set)  # ExecSyncs running in it

    @property
    def id(self) -> str:
        return self.item.id

    @property
    def pod_id(self) -> str:
        return self.item.pod_sandbox_id


@dataclass(eq=False)
class _Run:
    """One start of a container's simulated process."""

    process: processes.Process
    steps: Any
    exited: threading.Event = field(default_factory=threading.Event)
    # set once the process ran to its first sleep or its end: only then does
    # ``process.sigterm_exit_code`` say what PID 1 really is (an entrypoint script execs nginx)
    settled: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False


@dataclass(eq=False)
class _Exec:
    """One running ExecSync: ``wake`` ends its sleeps (the caller left, or ``killed``)."""

    wake: threading.Event
    killed: bool = False  # its container exited or went: the command died with it


_GENERATIONS = itertools.count(1)
"""One sequence for every index, so a generation is never seen twice, even across resets."""


class _Index:
    """Sets of IDs by state and by label pair, kept in step with the maps.

    Every change goes through here (a list item only changes by being added, moved to
    another state or removed), so ``generation`` changes exactly when a List answer can:
    the servicer reuses an answer for as long as it stays the same.
    """

    def __init__(self) -> None:
        self.by_state: dict[int, set[str]] = {}
        self.by_label: dict[tuple[str, str], set[str]] = {}
        self.generation = next(_GENERATIONS)

    def add(self, ident: str, state: int, labels: Mapping[str, str]) -> None:
        self.generation = next(_GENERATIONS)
        self.by_state.setdefault(state, set()).add(ident)
        for pair in labels.items():
            self.by_label.setdefault(pair, set()).add(ident)

    def move(self, ident: str, old: int, new: int) -> None:
        self.generation = next(_GENERATIONS)
        self.by_state.get(old, set()).discard(ident)
        self.by_state.setdefault(new, set()).add(ident)

    def remove(self, ident: str, state: int, labels: Mapping[str, str]) -> None:
        self.generation = next(_GENERATIONS)
        self.by_state.get(state, set()).discard(ident)
        for pair in labels.items():
            ids = self.by_label.get(pair)
            if ids is not None:
                ids.discard(ident)
                if not ids:
                    del self.by_label[pair]

    def clear(self) -> None:
        self.generation = next(_GENERATIONS)
        self.by_state.clear()
        self.by_label.clear()

    def select(self, state: int | None, labels: Mapping[str, str]) -> set[str] | None:
        """IDs matching state and every label, or None when neither filter is set."""
        sets: list[set[str]] = []
        if state is not None:
            sets.append(self.by_state.get(state, set()))
        sets.extend(self.by_label.get(pair, set()) for pair in labels.items())
        if not sets:
            return None
        sets.sort(key=len)
        result = set(sets[0])
        for other in sets[1:]:
            result &= other
            if not result:
                break
        return result


class RuntimeState:
    """Everything the fake runtime knows. Thread-safe; no gRPC."""

    #: What RunPodSandbox takes as runtime_handler (Status advertises them).
    runtime_handlers = RUNTIME_HANDLERS

    def __init__(
        self,
        *,
        images: Iterable[str] = (),
        registry: Registry | None = None,
        seed: str | int | None = None,
        root: str | os.PathLike[str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.registry = registry or Registry()
        self.events = EventHub()
        self._sleep = sleep
        self._lock = threading.RLock()
        self._ids = IdFactory(seed)
        self._seq = 0
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="crilab-state-"))
        self._scheduler = Scheduler()
        self._preload = list(images)
        self.pod_cidr = ""
        self._init_maps()
        try:
            for ref in self._preload:
                self.pull_image(ref)
        except BaseException:  # a bad preload: leave no timer thread and no temp dir behind
            self.close()
            raise

    # -- bookkeeping ---------------------------------------------------------

    def _init_maps(self) -> None:
        self.pods: dict[str, Pod] = {}
        self.containers: dict[str, Container] = {}
        self.images: dict[str, ImageRecord] = {}
        self._tags: dict[str, str] = {}  # normalized tag or digest ref -> image id
        self._pod_ids = PrefixIndex("pod sandbox")
        self._ctr_ids = PrefixIndex("container")
        self._pod_index = _Index()
        self._ctr_index = _Index()
        self._pod_names: dict[tuple[str, str, str, int], str] = {}
        self._ctr_names: dict[tuple[str, str, int], str] = {}
        self._logs_to_close: list[processes.CRILogWriter] = []  # of exited containers

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def reset(self) -> None:
        """Forget every pod, container and image, then pull the preloaded images again."""
        with self._lock:
            logs = self._stop_everything_locked()
            self._init_maps()
        self._forget_logs(logs)
        for ref in self._preload:
            self.pull_image(ref)

    def close(self) -> None:
        """Stop the timer thread and close logs; the state cannot serve afterwards."""
        with self._lock:
            logs = self._stop_everything_locked()
        self._scheduler.close()
        self.events.close()
        self._forget_logs(logs)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def _stop_everything_locked(self) -> list[tuple[processes.CRILogWriter, bool]]:
        """End every simulated process and exec; the logs to close (and whether to delete)."""
        for ctr in self.containers.values():
            if ctr.run is not None:
                ctr.run.cancelled = True
                ctr.run.exited.set()
            self._kill_execs_locked(ctr)
        return [(c.log, c.own_log) for c in self.containers.values() if c.log]

    def _forget_logs(self, logs: list[tuple[processes.CRILogWriter, bool]]) -> None:
        for writer, _ in logs:
            writer.close()
        self._delete_logs([writer.path for writer, own in logs if own])

    def check_invariants(self) -> list[str]:
        """Everything that must hold between the maps and indexes (for tests and fuzzing).

        Every index is compared with what the maps say it must hold: the prefix indexes,
        the state and label indexes of pods and containers, and the name reservations.
        """
        problems: list[str] = []
        with self._lock:
            for cid, ctr in self.containers.items():
                pod = self.pods.get(ctr.pod_id)
                if pod is None:
                    problems.append(f"container {cid} has no pod {ctr.pod_id}")
                elif cid not in pod.containers:
                    problems.append(f"pod {pod.id} does not list its container {cid}")
                if ctr.item.state != ctr.status.state:
                    problems.append(f"container {cid} list state and status disagree")
                if pod and pod.sandbox.state == NOTREADY and ctr.item.state == RUNNING:
                    problems.append(f"container {cid} RUNNING in NOTREADY pod {pod.id}")
                if ctr.item.state != RUNNING and ctr.execs:
                    problems.append(f"container {cid} is not running but has execs")
            for pid, pod in self.pods.items():
                problems += [
                    f"pod {pid} lists unknown {c}"
                    for c in pod.containers
                    if c not in self.containers
                ]
            problems += _index_problems(
                "container",
                self._ctr_index,
                {cid: (c.item.state, c.item.labels) for cid, c in self.containers.items()},
            )
            problems += _index_problems(
                "pod",
                self._pod_index,
                {pid: (p.sandbox.state, p.sandbox.labels) for pid, p in self.pods.items()},
            )
            if list(self._ctr_ids) != sorted(self.containers):
                problems.append("container prefix index differs from the map")
            if list(self._pod_ids) != sorted(self.pods):
                problems.append("pod prefix index differs from the map")
            ctr_names = {
                (c.pod_id, c.item.metadata.name, c.item.metadata.attempt): cid
                for cid, c in self.containers.items()
            }
            if self._ctr_names != ctr_names:
                problems.append("container name reservations differ from the map")
            pod_names = {_pod_key(p.sandbox.metadata): pid for pid, p in self.pods.items()}
            if self._pod_names != pod_names:
                problems.append("pod name reservations differ from the map")
        return problems

    # -- lookups --------------------------------------------------------------

    def _pod(self, ident: str, field_name: str = "pod_sandbox_id") -> Pod:
        return self.pods[self._pod_ids.resolve(ident, field_name)]

    def _container(self, ident: str, field_name: str = "container_id") -> Container:
        return self.containers[self._ctr_ids.resolve(ident, field_name)]

    # -- runtime --------------------------------------------------------------

    def version(self) -> api_pb2.VersionResponse:
        return api_pb2.VersionResponse(
            version=KUBE_API_VERSION,
            runtime_name=RUNTIME_NAME,
            runtime_version=RUNTIME_VERSION,
            runtime_api_version=RUNTIME_API_VERSION,
        )

    # -- pod sandboxes -------------------------------------------------------

    def run_pod_sandbox(self, config: api_pb2.PodSandboxConfig, runtime_handler: str = "") -> str:
        if not config.HasField("metadata"):
            raise InvalidArgument("config.metadata is required: set name, namespace and uid")
        md = config.metadata
        _require(md.name, "config.metadata.name")
        _check_log_directory(config.log_directory)
        _check_runtime_handler(runtime_handler)
        key = _pod_key(md)
        with self._lock:
            holder = self._pod_names.get(key)
            if holder is not None:
                raise AlreadyExists(
                    f'pod sandbox name "{_pod_name(md)}" is reserved for {holder}: a pod with '
                    "the same name, namespace, uid and attempt exists. Remove it first, or "
                    "increase metadata.attempt"
                )
            pid = self._ids.new("pod")
            seq = self._next_seq()
            stored = api_pb2.PodSandboxConfig()
            stored.CopyFrom(config)
            sandbox = api_pb2.PodSandbox(
                id=pid,
                metadata=md,
                state=READY,
                created_at=_now(),
                labels=config.labels,
                annotations=config.annotations,
                runtime_handler=runtime_handler,
            )
            host_net = config.linux.security_context.namespace_options.network == api_pb2.NODE
            ip = "" if host_net else f"10.88.{(seq >> 8) & 0xFF}.{(seq & 0xFF) or 1}"
            self.pods[pid] = Pod(seq, sandbox, stored, ip)
            self._pod_ids.add(pid)
            self._pod_index.add(pid, READY, config.labels)
            self._pod_names[key] = pid
        return pid

    def stop_pod_sandbox(self, pod_id: str) -> None:
        with self._lock:
            pod = self._pod(pod_id)
            for cid in pod.containers:
                if self.containers[cid].item.state == RUNNING:
                    self._exit_locked(self.containers[cid], EXIT_KILLED)
            if pod.sandbox.state == READY:
                pod.sandbox.state = NOTREADY
                self._pod_index.move(pod.id, READY, NOTREADY)
        self._close_logs()

    def remove_pod_sandbox(self, pod_id: str) -> None:
        with self._lock:
            try:
                pod = self._pod(pod_id)
            except NotFound:
                return  # removing what is gone is OK, as in containerd
            gone = [self._remove_container_locked(self.containers[c]) for c in list(pod.containers)]
            if pod.sandbox.state == READY:
                self._pod_index.move(pod.id, READY, NOTREADY)
                pod.sandbox.state = NOTREADY
            del self.pods[pod.id]
            self._pod_ids.discard(pod.id)
            self._pod_index.remove(pod.id, pod.sandbox.state, pod.sandbox.labels)
            self._pod_names.pop(_pod_key(pod.sandbox.metadata), None)
        self._close_logs()
        self._forget_logs(gone)  # the pod's own log directory goes with its last log

    def pod_sandbox_status(
        self, pod_id: str, verbose: bool = False
    ) -> api_pb2.PodSandboxStatusResponse:
        with self._lock:
            pod = self._pod(pod_id)
            resp = api_pb2.PodSandboxStatusResponse(status=self._pod_status(pod), timestamp=_now())
            resp.containers_statuses.extend(self.containers[c].status for c in pod.containers)
            if verbose:
                resp.info["info"] = json.dumps(self._pod_info(pod))
        return resp

    def _pod_status(self, pod: Pod) -> api_pb2.PodSandboxStatus:
        s = pod.sandbox
        status = api_pb2.PodSandboxStatus(
            id=s.id,
            metadata=s.metadata,
            state=s.state,
            created_at=s.created_at,
            labels=s.labels,
            annotations=s.annotations,
            runtime_handler=s.runtime_handler,
        )
        status.network.ip = pod.ip
        ns = pod.config.linux.security_context.namespace_options
        status.linux.namespaces.options.CopyFrom(ns)
        return status

    def _pod_info(self, pod: Pod) -> dict[str, Any]:
        return {
            "pid": 1000 + pod.seq,
            "runtimeHandler": pod.sandbox.runtime_handler,
            "image": "registry.k8s.io/pause:3.10",
            "config": {
                "metadata": {
                    "name": pod.sandbox.metadata.name,
                    "namespace": pod.sandbox.metadata.namespace,
                    "uid": pod.sandbox.metadata.uid,
                    "attempt": pod.sandbox.metadata.attempt,
                },
                "hostname": pod.config.hostname,
                "log_directory": pod.config.log_directory,
            },
            "note": "crilab fake runtime: no real sandbox process or network namespace exists",
        }

    @property
    def pods_generation(self) -> int:
        """Changes whenever a ListPodSandbox answer could (a pod added, moved, removed)."""
        return self._pod_index.generation

    @property
    def containers_generation(self) -> int:
        """Changes whenever a ListContainers answer could."""
        return self._ctr_index.generation

    def list_pod_sandbox(
        self, flt: api_pb2.PodSandboxFilter | None = None
    ) -> list[api_pb2.PodSandbox]:
        with self._lock:
            return [p.sandbox for p in self._select_pods(flt)]

    def _select_pods(self, flt: api_pb2.PodSandboxFilter | None) -> list[Pod]:
        if flt is None:
            return list(self.pods.values())
        if flt.id:
            found = [self.pods[i] for i in self._pod_ids.matching(flt.id, limit=len(self.pods))]
            return [p for p in found if _pod_matches(p, flt)]
        state = flt.state.state if flt.HasField("state") else None
        ids = self._pod_index.select(state, flt.label_selector)
        if ids is None:
            return list(self.pods.values())
        return _in_order(ids, self.pods)

    # -- containers ----------------------------------------------------------

    def create_container(self, pod_id: str, config: api_pb2.ContainerConfig) -> str:
        """Create a CREATED container and its (empty) log file.

        The name is reserved under the lock, the file is made outside it, and only then
        does the container appear (in lists and as a CREATED event): a failed create
        leaves nothing, and no event about the container comes before its CREATED.
        """
        _require(pod_id, "pod_sandbox_id")
        if not config.HasField("metadata"):
            raise InvalidArgument("config.metadata is required: set at least metadata.name")
        _require(config.metadata.name, "config.metadata.name")
        _require(config.image.image, "config.image.image")
        with self._lock:
            pod = self._pod(pod_id)
            if pod.sandbox.state != READY:
                raise NotFound(
                    f"pod sandbox {pod.id[:13]} is not ready (it was stopped): containers can "
                    "only be created in a READY pod; run a new pod sandbox"
                )
            image = self._find_image(config.image.image)
            if image is None:
                raise _image_not_found(config.image.image)
            md = config.metadata
            key = (pod.id, md.name, md.attempt)
            holder = self._ctr_names.get(key)
            if holder is not None:
                raise AlreadyExists(
                    f'container name "{md.name}" (attempt {md.attempt}) is reserved for {holder} '
                    "in this pod: remove that container first, or increase metadata.attempt"
                )
            argv = processes.resolve_argv(
                list(image.entrypoint), list(image.cmd), list(config.command), list(config.args)
            )
            processes.check_command_size(argv, "the container's command (with its args)")
            cid = self._ids.new("container")
            log_path = self._log_path(pod, config, cid)
            self._ctr_names[key] = cid  # held while the log file is made
        try:
            writer = processes.CRILogWriter(log_path)  # I/O outside the lock
        except (OSError, ValueError) as exc:  # too long a name, no permission, a NUL...
            with self._lock:
                if self._ctr_names.get(key) == cid:
                    del self._ctr_names[key]
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise InvalidArgument(
                f"cannot create the container's log file {log_path!r}: {reason}. Its path is "
                "the pod's log_directory joined with config.log_path (default "
                "NAME/ATTEMPT.log from config.metadata): choose a shorter or writable one"
            ) from None
        # The file exists at once (crictl logs works), but only a RUNNING container holds
        # it open: thousands of created or exited containers must not exhaust descriptors.
        writer.close()
        with self._lock:
            if self._ctr_names.get(key) != cid or self.pods.get(pod.id) is not pod:
                gone = "removed"  # the pod went (or the runtime was reset) meanwhile
            elif pod.sandbox.state != READY:
                gone = "stopped"
            else:
                gone = ""
                self._add_container_locked(pod, config, cid, image, argv, writer)
            if gone and self._ctr_names.get(key) == cid:
                del self._ctr_names[key]
        if gone:
            if not pod.config.log_directory:
                self._delete_logs([log_path])
            raise NotFound(
                f"pod sandbox {pod.id[:13]} was {gone} while the container was being created: "
                "run a new pod sandbox and create the container there"
            )
        return cid

    def _add_container_locked(
        self,
        pod: Pod,
        config: api_pb2.ContainerConfig,
        cid: str,
        image: ImageRecord,
        argv: list[str],
        writer: processes.CRILogWriter,
    ) -> None:
        md = config.metadata
        stored = api_pb2.ContainerConfig()
        stored.CopyFrom(config)
        spec = api_pb2.ImageSpec(image=image.id, user_specified_image=config.image.image)
        created = _now()
        item = api_pb2.Container(
            id=cid,
            pod_sandbox_id=pod.id,
            metadata=md,
            image=spec,
            image_ref=image.id,
            image_id=image.id,
            state=CREATED,
            created_at=created,
            labels=config.labels,
            annotations=config.annotations,
        )
        status = api_pb2.ContainerStatus(
            id=cid,
            metadata=md,
            state=CREATED,
            created_at=created,
            image=spec,
            image_ref=image.id,
            image_id=image.id,
            labels=config.labels,
            annotations=config.annotations,
            mounts=config.mounts,
            log_path=writer.path,
        )
        if config.linux.HasField("resources"):
            status.resources.linux.CopyFrom(config.linux.resources)
        ctr = Container(self._next_seq(), item, status, stored, image, argv, writer)
        ctr.own_log = not pod.config.log_directory
        self.containers[cid] = ctr
        pod.containers[cid] = None
        self._ctr_ids.add(cid)
        self._ctr_index.add(cid, CREATED, config.labels)
        self._emit_locked(ctr, api_pb2.CONTAINER_CREATED_EVENT, pod)

    def _log_path(self, pod: Pod, config: api_pb2.ContainerConfig, cid: str) -> str:
        directory = pod.config.log_directory or str(self.root / "logs" / pod.id)
        name = config.log_path or f"{config.metadata.name}/{config.metadata.attempt}.log"
        path = os.path.normpath(os.path.join(directory, name))
        # join(..., "") ends the directory with one separator, also for "/"
        if not path.startswith(os.path.join(os.path.normpath(directory), "")):
            what = (
                f"config.log_path {config.log_path!r}"
                if config.log_path
                else f"config.metadata.name {config.metadata.name!r} (the default log_path "
                "is NAME/ATTEMPT.log)"
            )
            raise InvalidArgument(
                f"{what} leaves the pod's log_directory; use a relative path such as 'name/0.log'"
            )
        return path

    def start_container(self, container_id: str) -> None:
        """Start a CREATED container; its log is opened first, outside the lock.

        A program that does not exist fails the call and leaves the container EXITED
        (128, StartError), as containerd does; a log that cannot be opened fails it and
        leaves the container CREATED, untouched.
        """
        with self._lock:
            ctr = self._container(container_id)
            self._check_startable_locked(ctr)
            missing = processes.missing_program(ctr.argv)
            if missing is not None:
                self._start_error_locked(ctr, missing)
                raise FailedPrecondition(_start_error_advice(ctr, missing))
            ctr.starting = True
        assert ctr.log is not None  # every created container has its writer
        try:
            ctr.log.reopen()
        except OSError as exc:
            with self._lock:
                ctr.starting = False
            raise FailedPrecondition(_log_advice(ctr.log.path, exc, "start")) from None
        error: CRIError | None = None
        with self._lock:
            ctr.starting = False
            try:
                if self.containers.get(ctr.id) is not ctr:
                    raise NotFound(
                        f"container {ctr.id[:13]} was removed while it was being started"
                    )
                self._check_startable_locked(ctr)
            except CRIError as exc:
                error = exc
            else:
                pod = self.pods[ctr.pod_id]
                process = processes.spawn(ctr.argv, self._context(ctr, pod))
                ctr.run = run = _Run(process, process.steps())
                process.check = functools.partial(_check_cancelled, run)
                self._move_locked(ctr, RUNNING)
                ctr.status.started_at = _now()
                self._emit_locked(ctr, api_pb2.CONTAINER_STARTED_EVENT, pod)
        if error is not None:
            ctr.log.close()
            raise error
        self._scheduler.call_soon(lambda: self._advance(ctr, run))

    def _check_startable_locked(self, ctr: Container) -> None:
        state = ctr.item.state
        if state != CREATED:
            raise FailedPrecondition(
                f"container {ctr.id[:13]} is in {container_state_name(state)} state, not "
                "CONTAINER_CREATED: a container starts only once. Create a new container "
                "(with metadata.attempt + 1) to run it again"
            )
        if ctr.starting:
            raise FailedPrecondition(
                f"container {ctr.id[:13]} is being started by another StartContainer call: "
                "a container starts only once"
            )
        pod = self.pods[ctr.pod_id]
        if pod.sandbox.state != READY:
            raise FailedPrecondition(
                f"pod sandbox {pod.id[:13]} is not ready: a container cannot start in a stopped pod"
            )

    def _start_error_locked(self, ctr: Container, message: str) -> None:
        """The process could not be started: EXITED, 128, StartError (containerd's record)."""
        self._move_locked(ctr, EXITED)
        ctr.status.exit_code = EXIT_START_ERROR
        ctr.status.finished_at = _now()
        ctr.status.reason = "StartError"
        ctr.status.message = START_ERROR_PREFIX + message
        self._emit_locked(ctr, api_pb2.CONTAINER_STOPPED_EVENT)

    def _context(self, ctr: Container, pod: Pod) -> processes.ProcessContext:
        if ctr.ctx is None:
            ctr.ctx = self._new_context(ctr, pod)
        return ctr.ctx

    def _new_context(self, ctr: Container, pod: Pod) -> processes.ProcessContext:
        env = dict(e.split("=", 1) for e in ctr.image.env if "=" in e)
        for kv in ctr.config.envs:
            value = kv.value
            env[kv.key] = value.decode(errors="replace") if isinstance(value, bytes) else value
        hostname = pod.config.hostname or pod.sandbox.metadata.name
        env.setdefault("HOSTNAME", hostname)
        return processes.ProcessContext(
            env=env,
            hostname=hostname,
            files=processes.default_files(
                hostname, ctr.image.os_release, ctr.argv, ip=pod.ip or None
            ),
            working_dir=ctr.config.working_dir or ctr.image.working_dir or "/",
            user=ctr.image.user,
        )

    def _advance(self, ctr: Container, run: _Run) -> None:
        """Pull the process's next steps: write output, wait out sleeps, notice the exit."""
        try:
            self._advance_steps(ctr, run)
        finally:
            run.settled.set()

    def _advance_steps(self, ctr: Container, run: _Run) -> None:
        while not run.cancelled:
            try:
                step = next(run.steps)
            except StopIteration as stop:
                self._exited(ctr, run, processes.exit_code_of(run.process, stop))
                return
            except Exception:  # a simulator bug becomes a crash of that container only
                if not run.cancelled:
                    log.exception("crilab: the simulated process of %s failed", ctr.id[:13])
                self._exited(ctr, run, 139)
                return
            if isinstance(step, processes.Output):
                if ctr.log:
                    with contextlib.suppress(FailedPrecondition):  # removed meanwhile
                        ctr.log.write(step.stream, step.data)
            elif isinstance(step, processes.Sleep):
                if step.seconds > MAX_DELAY:  # inf, or centuries: until stopped
                    return
                self._scheduler.call_later(step.seconds, lambda: self._advance(ctr, run))
                return

    def _exited(self, ctr: Container, run: _Run, code: int) -> None:
        with self._lock:
            if run.cancelled or ctr.run is not run or ctr.item.state != RUNNING:
                return
            self._exit_locked(ctr, code)
        self._close_logs()

    def _exit_locked(self, ctr: Container, code: int) -> None:
        if ctr.run is not None:
            ctr.run.cancelled = True
            ctr.run.exited.set()
        self._kill_execs_locked(ctr)
        self._move_locked(ctr, EXITED)
        ctr.status.exit_code = code
        ctr.status.finished_at = _now()
        ctr.status.reason = "Completed" if code == 0 else "Error"
        if ctr.log:
            self._logs_to_close.append(ctr.log)  # closed by _close_logs, outside the lock
        self._emit_locked(ctr, api_pb2.CONTAINER_STOPPED_EVENT)

    def _kill_execs_locked(self, ctr: Container) -> None:
        """The container's processes die with it: every ExecSync in it ends (exit 137)."""
        for ex in ctr.execs:
            ex.killed = True
            ex.wake.set()
        ctr.execs.clear()

    def _move_locked(self, ctr: Container, new: int) -> None:
        self._ctr_index.move(ctr.id, ctr.item.state, new)
        ctr.item.state = new
        ctr.status.state = new

    def stop_container(
        self, container_id: str, timeout: int = 0, *, abandoned: threading.Event | None = None
    ) -> None:
        """Stop with a grace period of ``timeout`` seconds (<= 0: SIGKILL at once).

        ``abandoned`` is set when the caller gives up (cancelled, deadline passed): the wait
        for the grace period ends there and the container keeps running, as in containerd.
        """
        with self._lock:
            ctr = self._container(container_id)
            if ctr.item.state != RUNNING or ctr.run is None:
                return  # stopping CREATED or EXITED is OK and changes nothing
            run = ctr.run
            pid1 = ctr.config.linux.security_context.namespace_options.pid == api_pb2.CONTAINER
        # A stop right after the start must not see the process before its first step
        # (the entrypoint script, not the nginx it execs): let it settle, outside the lock.
        if timeout > 0:
            run.settled.wait(SETTLE_SECONDS)
        graceful = run.process.sigterm_exit_code
        if timeout <= 0:
            graceful = None  # no grace period: SIGKILL at once, as containerd does
        elif graceful is None and not pid1:
            # In the pod's (or the node's) PID namespace the process is not PID 1, so
            # SIGTERM's default action applies: it dies of the signal, 128 + 15.
            graceful = EXIT_TERMINATED
        if graceful is not None:
            self._exited(ctr, run, graceful)
            return
        # PID 1 of its own PID namespace gets no default signal actions, so a shell or
        # sleep ignores SIGTERM: wait out the grace period, then SIGKILL.
        if timeout > 0 and not _wait(run.exited, timeout, abandoned):
            return  # the caller gave up before the grace period ended
        with self._lock:
            if ctr.run is not run or ctr.item.state != RUNNING:
                return
            self._exit_locked(ctr, EXIT_KILLED)
        self._close_logs()

    def remove_container(self, container_id: str) -> None:
        with self._lock:
            try:
                ctr = self._container(container_id)
            except NotFound:
                return  # unknown or already removed: OK, as in containerd
            gone = [self._remove_container_locked(ctr)]
        self._close_logs()
        self._forget_logs(gone)

    def _remove_container_locked(self, ctr: Container) -> tuple[processes.CRILogWriter, bool]:
        """Kill it if it runs, forget it; its log writer (and whether to delete the file)."""
        if ctr.item.state == RUNNING:
            self._exit_locked(ctr, EXIT_KILLED)
        del self.containers[ctr.id]
        self._ctr_ids.discard(ctr.id)
        self._ctr_index.remove(ctr.id, ctr.item.state, ctr.item.labels)
        pod = self.pods.get(ctr.pod_id)
        if pod is not None:
            pod.containers.pop(ctr.id, None)
        self._ctr_names.pop((ctr.pod_id, ctr.item.metadata.name, ctr.item.metadata.attempt), None)
        self._emit_locked(ctr, api_pb2.CONTAINER_DELETED_EVENT, pod)
        assert ctr.log is not None
        return ctr.log, ctr.own_log

    def _delete_logs(self, paths: list[str]) -> None:
        """Delete logs in the runtime's own directories (never one a client named), with
        their rotated ``.1`` and the directories they leave empty. Outside the lock."""
        top = self.root / "logs"
        for path in paths:
            for name in (path, path + ".1"):
                with contextlib.suppress(OSError):
                    os.unlink(name)
            parent = Path(path).parent
            while parent != top and top in parent.parents:
                try:
                    parent.rmdir()
                except OSError:
                    break  # not empty (another container's log), or gone
                parent = parent.parent

    def container_status(
        self, container_id: str, verbose: bool = False
    ) -> api_pb2.ContainerStatusResponse:
        with self._lock:
            ctr = self._container(container_id)
            resp = api_pb2.ContainerStatusResponse(status=ctr.status)
            if verbose:
                resp.info["info"] = json.dumps(self._container_info(ctr))
        return resp

    def _container_info(self, ctr: Container) -> dict[str, Any]:
        return {
            "sandboxID": ctr.pod_id,
            "pid": 2000 + ctr.seq if ctr.item.state == RUNNING else 0,
            "image": ctr.image.repo_tags[0] if ctr.image.repo_tags else ctr.image.id,
            "runtimeSpec": {"process": {"args": ctr.argv, "cwd": ctr.config.working_dir or "/"}},
            "note": "crilab fake runtime: the process is simulated, not a real one",
        }

    def list_containers(
        self, flt: api_pb2.ContainerFilter | None = None
    ) -> list[api_pb2.Container]:
        with self._lock:
            return [c.item for c in self._select_containers(flt)]

    def _select_containers(self, flt: api_pb2.ContainerFilter | None) -> list[Container]:
        if flt is None:
            return list(self.containers.values())
        if flt.id:
            found = self._ctr_ids.matching(flt.id, limit=len(self.containers))
            return [
                self.containers[i] for i in found if _container_matches(self.containers[i], flt)
            ]
        if flt.pod_sandbox_id:
            pods = self._pod_ids.matching(flt.pod_sandbox_id, limit=2)
            if len(pods) != 1:
                return []
            ctrs = [self.containers[c] for c in self.pods[pods[0]].containers]
            return [c for c in ctrs if _container_matches(c, flt)]
        state = flt.state.state if flt.HasField("state") else None
        ids = self._ctr_index.select(state, flt.label_selector)
        if ids is None:
            return list(self.containers.values())
        return _in_order(ids, self.containers)

    def exec_sync(
        self,
        container_id: str,
        cmd: list[str],
        timeout: int = 0,
        *,
        abandoned: threading.Event | None = None,
    ) -> api_pb2.ExecSyncResponse:
        """Run ``cmd`` in the container until it exits or ``timeout`` seconds pass.

        ``abandoned`` is set when the caller gives up: the command stops there, so a
        caller that went away never keeps a server thread sleeping. The runtime sets it
        too when the container exits or is removed: the command is killed with it, and
        the answer is its output so far with exit code 137.
        """
        _require(cmd, "cmd")
        processes.check_command_size(cmd, "cmd")
        ex = _Exec(abandoned if abandoned is not None else threading.Event())
        with self._lock:
            ctr = self._container(container_id)
            if ctr.item.state != RUNNING:
                raise FailedPrecondition(
                    f"container {ctr.id[:13]} is in {container_state_name(ctr.item.state)} "
                    "state: exec needs a RUNNING container (start it first)"
                )
            ctx = self._context(ctr, self.pods[ctr.pod_id])
            ctr.execs.add(ex)
        try:
            result = processes.run_sync(
                processes.spawn(list(cmd), ctx),
                timeout if timeout > 0 else None,
                sleep=self._sleeper(ex),
                check=functools.partial(_check_exec, ex),
            )
        finally:
            with self._lock:
                ctr.execs.discard(ex)
        return api_pb2.ExecSyncResponse(
            stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code
        )

    def _sleeper(self, ex: _Exec) -> Callable[[float], None]:
        """``self._sleep``, cut short once the caller leaves or the container goes."""

        def sleep(seconds: float) -> None:
            if self._sleep is time.sleep:
                ex.wake.wait(capped(seconds))
            else:  # an injected clock (tests): sleep with it, then look
                self._sleep(seconds)
            _check_exec(ex)

        return sleep

    def update_pod_sandbox_resources(self, pod_id: str) -> None:
        """Accepted and checked; the fake has no cgroups to resize."""
        with self._lock:
            self._pod(pod_id)

    def reopen_container_log(self, container_id: str) -> None:
        with self._lock:
            ctr = self._container(container_id)
            if ctr.item.state != RUNNING:
                raise FailedPrecondition(
                    f"container {ctr.id[:13]} is not running: only a running container's log "
                    "can be reopened"
                )
        if ctr.log:
            try:
                ctr.log.reopen()
            except OSError as exc:  # the file in use before stays in use
                raise FailedPrecondition(_log_advice(ctr.log.path, exc, "reopen")) from None

    def update_container_resources(
        self, container_id: str, linux: api_pb2.LinuxContainerResources | None
    ) -> None:
        """Record new limits. An EXITED container takes them too (containerd updates its
        spec and answers OK; they would apply if it ran again)."""
        with self._lock:
            ctr = self._container(container_id)
            if linux is not None:
                ctr.status.resources.linux.CopyFrom(linux)

    # -- events ----------------------------------------------------------------

    def _emit_locked(self, ctr: Container, kind: int, pod: Pod | None = None) -> None:
        """Build and publish one event, under the lock: subscribers see events in the
        order of the transitions. Built only for subscribers (it copies every status of
        the pod); one that would not fit a gRPC message is trimmed."""
        if not self.events.subscribers:
            return
        pod = pod or self.pods.get(ctr.pod_id)
        event = api_pb2.ContainerEventResponse(
            container_id=ctr.id, container_event_type=kind, created_at=_now()
        )
        if pod is not None:
            event.pod_sandbox_status.CopyFrom(self._pod_status(pod))
            event.containers_statuses.extend(
                self.containers[c].status for c in pod.containers if c in self.containers
            )
        if kind == api_pb2.CONTAINER_DELETED_EVENT:
            event.containers_statuses.append(ctr.status)
        size = event.ByteSize()
        if size > MAX_EVENT_BYTES:
            size = _trim_event(event, size)
        self.events.publish(event, size)

    def _close_logs(self) -> None:
        """Close the logs of containers that exited (collected under the lock)."""
        with self._lock:
            logs, self._logs_to_close = self._logs_to_close, []
        for writer in logs:
            writer.close()

    # -- images ----------------------------------------------------------------

    def _find_image(self, ref: str) -> ImageRecord | None:
        if ref in self.images:
            return self.images[ref]
        if (ref.startswith("sha256:") and len(ref) > len("sha256:")) or (
            len(ref) >= 12 and all(c in "0123456789abcdef" for c in ref)
        ):  # an ID or a prefix of one; "sha256:" alone would be a prefix of every ID
            full = ref if ref.startswith("sha256:") else f"sha256:{ref}"
            matches = [i for i in self.images if i.startswith(full)]
            if len(matches) == 1:
                return self.images[matches[0]]
        try:
            normalized = normalize(ref)
        except InvalidArgument:
            return None
        ident = self._tags.get(normalized)
        return self.images.get(ident) if ident else None

    def pull_image(self, ref: str) -> str:
        _require(ref, "image.image")
        record = self.registry.resolve(ref)  # may raise NotFound / InvalidArgument
        with self._lock:
            old = self.images.get(record.id)
            record = old.merged(record) if old else record
            self.images[record.id] = record
            for tag in (*record.repo_tags, *record.repo_digests):
                self._tags[tag] = record.id
        return record.id

    def image_status(self, ref: str, verbose: bool = False) -> api_pb2.ImageStatusResponse:
        _require(ref, "image.image")
        with self._lock:
            record = self._find_image(ref)
        resp = api_pb2.ImageStatusResponse()
        if record is not None:
            resp.image.CopyFrom(record.to_proto())
            if verbose:
                resp.info["info"] = json.dumps({"imageSpec": record.config_json()})
        return resp

    def list_images(self, ref: str = "") -> list[api_pb2.Image]:
        with self._lock:
            if ref:
                record = self._find_image(ref)
                return [record.to_proto()] if record else []
            return [r.to_proto() for r in self.images.values()]

    def remove_image(self, ref: str) -> None:
        _require(ref, "image.image")
        with self._lock:
            record = self._find_image(ref)
            if record is None:
                return  # removing a missing image is OK
            del self.images[record.id]
            for tag, ident in list(self._tags.items()):
                if ident == record.id:
                    del self._tags[tag]

    def image_fs_usage(self) -> tuple[int, int]:
        with self._lock:
            return sum(r.size for r in self.images.values()), len(self.images)

    @contextlib.contextmanager
    def locked(self):
        """Hold the state lock (for consistent multi-step reads in tests)."""
        with self._lock:
            yield self


def _index_problems(
    kind: str, index: _Index, records: Mapping[str, tuple[int, Mapping[str, str]]]
) -> list[str]:
    """How ``index`` differs from what ``records`` (ID -> (state, labels)) say it must hold."""
    problems = []
    by_state: dict[int, set[str]] = {}
    by_label: dict[tuple[str, str], set[str]] = {}
    for ident, (state, labels) in records.items():
        by_state.setdefault(state, set()).add(ident)
        for pair in labels.items():
            by_label.setdefault(pair, set()).add(ident)
    for state in set(by_state) | set(index.by_state):
        want, have = by_state.get(state, set()), index.by_state.get(state, set())
        if want != have:
            problems.append(
                f"{kind} state index for {state}: missing {sorted(want - have)[:3]}, "
                f"extra {sorted(have - want)[:3]}"
            )
    for pair in set(by_label) | set(index.by_label):
        want, have = by_label.get(pair, set()), index.by_label.get(pair)
        if have is None or want != have:
            kept = have or set()
            problems.append(
                f"{kind} label index for {pair!r}: missing {sorted(want - kept)[:3]}, "
                f"extra {sorted(kept - want)[:3]}"
                + (" (an empty set is kept)" if have is not None and not have else "")
            )
    return problems


def _pod_key(md: api_pb2.PodSandboxMetadata) -> tuple[str, str, str, int]:
    return (md.name, md.namespace, md.uid, md.attempt)


def _check_exec(ex: _Exec) -> None:
    """Stop a running ExecSync: killed with its container, or its caller left."""
    if ex.killed:
        raise processes.Killed()
    if ex.wake.is_set():
        raise DeadlineExceeded(
            "the caller gave up (cancelled, or its deadline passed), so crilab stopped the command"
        )


def _check_cancelled(run: _Run) -> None:
    """Stop a container's process in the middle of long work once it was stopped."""
    if run.cancelled:
        raise processes.Killed()


def _trim_event(event: api_pb2.ContainerEventResponse, size: int) -> int:
    """Make an event over the message limit fit, saying what was left out; its new size.

    First the statuses of the pod's other containers go, then this container's own, then
    the pod's labels and annotations: a watcher always gets the event itself.
    """
    own = [s for s in event.containers_statuses if s.id == event.container_id][-1:]
    left_out = "the statuses of the pod's other containers"
    del event.containers_statuses[:]
    event.containers_statuses.extend(own)
    if event.ByteSize() > MAX_EVENT_BYTES:
        del event.containers_statuses[:]
        left_out = "every container status"
    pod = event.pod_sandbox_status
    if event.ByteSize() > MAX_EVENT_BYTES:
        pod.ClearField("labels")
        pod.ClearField("annotations")
        left_out += " and the pod's labels and annotations"
    pod.annotations[EVENT_TRIMMED_NOTE] = (
        f"crilab: this event would have been {size} bytes, over the 16 MiB gRPC message "
        f"limit, so {left_out} were left out. Read them with PodSandboxStatus or "
        "ContainerStatus"
    )
    return event.ByteSize()


def _image_not_found(ref: str) -> NotFound:
    """NOT_FOUND (as containerd) with advice that fits: pull it, or fix a malformed name."""
    try:
        normalize(ref)
    except InvalidArgument as exc:
        return NotFound(
            f'image "{ref}" not found: {exc.message}. No image can have that name, so no '
            "pull will find it: fix config.image.image"
        )
    return NotFound(f'image "{ref}" not found: pull it first (PullImage, or crictl pull {ref})')


def _start_error_advice(ctr: Container, missing: str) -> str:
    return (
        f"cannot start container {ctr.id[:13]}: {missing}. It is now CONTAINER_EXITED "
        f"(exit code {EXIT_START_ERROR}, reason StartError), as containerd leaves it. Fix "
        "config.command (or pick an image whose entrypoint exists) and create a new "
        "container; crilab's images have these programs: " + ", ".join(processes.program_names())
    )


def _log_advice(path: str, exc: OSError, doing: str) -> str:
    reason = exc.strerror or str(exc)
    directory = os.path.dirname(path)
    what = (
        "the container stays CONTAINER_CREATED: fix it, then call StartContainer again"
        if doing == "start"
        else "the container keeps writing to the file it had"
    )
    return (
        f"cannot open the container's log file {path!r}: {reason}. Its directory "
        f"{directory!r} must be a writable directory and the path itself must not be a "
        f"directory; {what}"
    )


def _check_runtime_handler(handler: str) -> None:
    if handler not in RUNTIME_HANDLERS:
        names = ", ".join(f'"{h}"' for h in RUNTIME_HANDLERS)
        raise NotFound(
            f"no runtime for {handler!r} is configured: this runtime has the handlers "
            f'{names} ("" is the default). Leave runtime_handler empty (or the pod\'s '
            "RuntimeClass unset) to use the default"
        )


def _check_log_directory(directory: str) -> None:
    """An absolute, plain path: container logs are written below it."""
    if not directory:
        return
    if "\x00" in directory:
        raise InvalidArgument("config.log_directory contains a NUL character: no path can")
    if not os.path.isabs(directory):
        raise InvalidArgument(f"config.log_directory {directory!r} must be an absolute path")
    if ".." in directory.split("/"):
        raise InvalidArgument(
            f"config.log_directory {directory!r} must not contain '..': container logs are "
            "written below it, so it must say plainly where (e.g. /var/log/pods/NS_NAME_UID)"
        )


def _wait(event: threading.Event, seconds: float, abandoned: threading.Event | None) -> bool:
    """Wait up to ``seconds`` for ``event``; False if ``abandoned`` was set first.

    Waits in slices: one wait cannot watch two events, and a huge ``seconds``
    (StopContainer's timeout is an int64) would overflow ``Event.wait``.
    """
    end = time.monotonic() + seconds
    while not event.is_set():
        if abandoned is not None and abandoned.is_set():
            return False
        left = end - time.monotonic()
        if left <= 0:
            break
        event.wait(min(left, 0.25))
    return True


def _in_order(ids: set[str], table: dict[str, Any]) -> list[Any]:
    """The records of ``ids`` in creation order (dicts keep insertion order).

    A small match is sorted by sequence number; a large one is picked out by one pass over
    the table, which beats sorting most of it.
    """
    if len(ids) * 8 > len(table):
        return [record for ident, record in table.items() if ident in ids]
    return sorted((table[i] for i in ids), key=lambda record: record.seq)


def _pod_name(md: api_pb2.PodSandboxMetadata) -> str:
    return f"{md.name}_{md.namespace}_{md.uid}_{md.attempt}"


def _labels_match(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _pod_matches(pod: Pod, flt: api_pb2.PodSandboxFilter) -> bool:
    if flt.HasField("state") and pod.sandbox.state != flt.state.state:
        return False
    return _labels_match(pod.sandbox.labels, flt.label_selector)


def _container_matches(ctr: Container, flt: api_pb2.ContainerFilter) -> bool:
    if flt.HasField("state") and ctr.item.state != flt.state.state:
        return False
    if flt.pod_sandbox_id and not ctr.pod_id.startswith(flt.pod_sandbox_id):
        return False
    return _labels_match(ctr.item.labels, flt.label_selector)
