"""The fake runtime's state: pods, containers and images, and the rules that move them.

No gRPC here: every method takes plain values or protobuf messages and returns
protobuf messages, raising ``errors.CRIError`` subclasses for mistakes. The
servicer maps those to status codes; tests and benchmarks call this directly.

State is kept as protobuf (the ``PodSandbox``/``Container`` list items and
their statuses are updated in place), so a List answer is a copy of stored
messages, not a rebuild from dicts. Filters use indexes (by state, pod and
label), never a scan of every container. One lock guards the maps and indexes;
no I/O and no sleeping happen under it.

Behaviour follows containerd 1.6 (observed), except that where containerd
answers UNKNOWN for a caller's mistake this answers the precise code
(ALREADY_EXISTS, FAILED_PRECONDITION); see docs/behaviour.md.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..stubs import api_pb2
from . import processes
from .errors import AlreadyExists, DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound
from .events import EventHub
from .ids import IdFactory, PrefixIndex
from .registry import ImageRecord, Registry, normalize
from .scheduler import Scheduler

CREATED = api_pb2.CONTAINER_CREATED
RUNNING = api_pb2.CONTAINER_RUNNING
EXITED = api_pb2.CONTAINER_EXITED
READY = api_pb2.SANDBOX_READY
NOTREADY = api_pb2.SANDBOX_NOTREADY

EXIT_KILLED = 137  # 128 + SIGKILL, what a runtime reports for a killed process
SETTLE_SECONDS = 1.0  # longest StopContainer waits for a just-started process's first step
EXIT_TERMINATED = 143  # 128 + SIGTERM

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
        for ref in self._preload:
            self.pull_image(ref)

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
            runs = [c.run for c in self.containers.values() if c.run]
            logs = [c.log for c in self.containers.values() if c.log]
            for run in runs:
                run.cancelled = True
                run.exited.set()
            self._init_maps()
        for log in logs:
            log.close()
        for ref in self._preload:
            self.pull_image(ref)

    def close(self) -> None:
        """Stop the timer thread and close logs; the state cannot serve afterwards."""
        with self._lock:
            runs = [c.run for c in self.containers.values() if c.run]
            logs = [c.log for c in self.containers.values() if c.log]
        for run in runs:
            run.cancelled = True
            run.exited.set()
        self._scheduler.close()
        self.events.close()
        for log in logs:
            log.close()
        if self._own_root:
            import shutil

            shutil.rmtree(self.root, ignore_errors=True)

    def check_invariants(self) -> list[str]:
        """Everything that must hold between the maps and indexes (for tests and fuzzing)."""
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
                if cid not in self._ctr_index.by_state.get(ctr.item.state, set()):
                    problems.append(f"container {cid} missing from its state index")
                if pod and pod.sandbox.state == NOTREADY and ctr.item.state == RUNNING:
                    problems.append(f"container {cid} RUNNING in NOTREADY pod {pod.id}")
            for pid, pod in self.pods.items():
                problems += [
                    f"pod {pid} lists unknown {c}"
                    for c in pod.containers
                    if c not in self.containers
                ]
            if len(self._ctr_ids) != len(self.containers):
                problems.append("container prefix index size differs from the map")
            if len(self._pod_ids) != len(self.pods):
                problems.append("pod prefix index size differs from the map")
            indexed = sum(len(s) for s in self._ctr_index.by_state.values())
            if indexed != len(self.containers):
                problems.append(
                    f"state index holds {indexed} containers, map {len(self.containers)}"
                )
            if len(self._ctr_names) != len(self.containers):
                problems.append("container name reservations differ from the map")
            if len(self._pod_names) != len(self.pods):
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
        key = (md.name, md.namespace, md.uid, md.attempt)
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
            to_kill = [
                self.containers[c]
                for c in pod.containers
                if self.containers[c].item.state == RUNNING
            ]
            events = [self._exit_locked(c, EXIT_KILLED) for c in to_kill]
            if pod.sandbox.state == READY:
                pod.sandbox.state = NOTREADY
                self._pod_index.move(pod.id, READY, NOTREADY)
        self._publish(events)

    def remove_pod_sandbox(self, pod_id: str) -> None:
        events = []
        with self._lock:
            try:
                pod = self._pod(pod_id)
            except NotFound:
                return  # removing what is gone is OK, as in containerd
            for cid in list(pod.containers):
                ctr = self.containers[cid]
                if ctr.item.state == RUNNING:
                    events.append(self._exit_locked(ctr, EXIT_KILLED))
                events.append(self._remove_container_locked(ctr))
            if pod.sandbox.state == READY:
                self._pod_index.move(pod.id, READY, NOTREADY)
                pod.sandbox.state = NOTREADY
            del self.pods[pod.id]
            self._pod_ids.discard(pod.id)
            self._pod_index.remove(pod.id, pod.sandbox.state, pod.sandbox.labels)
            md = pod.sandbox.metadata
            self._pod_names.pop((md.name, md.namespace, md.uid, md.attempt), None)
        self._publish(events)

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
                raise NotFound(
                    f'image "{config.image.image}" not found: pull it first '
                    f"(PullImage, or crictl pull {config.image.image})"
                )
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
            cid = self._ids.new("container")
            log_path = self._log_path(pod, config, cid)
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
                log_path=log_path,
            )
            if config.linux.HasField("resources"):
                status.resources.linux.CopyFrom(config.linux.resources)
            ctr = Container(self._next_seq(), item, status, stored, image, argv, None)
            self.containers[cid] = ctr
            pod.containers[cid] = None
            self._ctr_ids.add(cid)
            self._ctr_index.add(cid, CREATED, config.labels)
            self._ctr_names[key] = cid
            event = self._event_locked(ctr, api_pb2.CONTAINER_CREATED_EVENT)
        try:
            ctr.log = processes.CRILogWriter(log_path)  # I/O outside the lock
        except (OSError, ValueError) as exc:  # too long a name, no permission, a NUL...
            with self._lock:  # never announced (no event sent): take it back quietly
                if self.containers.get(cid) is ctr:
                    if ctr.item.state == RUNNING:
                        self._exit_locked(ctr, EXIT_KILLED)
                    self._remove_container_locked(ctr)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise InvalidArgument(
                f"cannot create the container's log file {log_path!r}: {reason}. Its path is "
                "the pod's log_directory joined with config.log_path (default "
                "NAME/ATTEMPT.log from config.metadata): choose a shorter or writable one"
            ) from None
        # The file exists at once (crictl logs works), but only a RUNNING container holds
        # it open: thousands of created or exited containers must not exhaust descriptors.
        ctr.log.close()
        self._publish([event])
        return cid

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
        with self._lock:
            ctr = self._container(container_id)
            state = ctr.item.state
            if state != CREATED:
                raise FailedPrecondition(
                    f"container {ctr.id[:13]} is in {container_state_name(state)} state, not "
                    "CONTAINER_CREATED: a container starts only once. Create a new container "
                    "(with metadata.attempt + 1) to run it again"
                )
            pod = self.pods[ctr.pod_id]
            if pod.sandbox.state != READY:
                raise FailedPrecondition(
                    f"pod sandbox {pod.id[:13]} is not ready: a container cannot start in a "
                    "stopped pod"
                )
            process = processes.spawn(ctr.argv, self._context(ctr, pod))
            ctr.run = _Run(process, process.steps())
            self._move_locked(ctr, RUNNING)
            ctr.status.started_at = _now()
            event = self._event_locked(ctr, api_pb2.CONTAINER_STARTED_EVENT)
            run = ctr.run
        if ctr.log:
            ctr.log.reopen()
            if run.cancelled:  # killed meanwhile, and its log closed before this reopen
                ctr.log.close()
        self._publish([event])
        self._scheduler.call_soon(lambda: self._advance(ctr, run))

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
                self._exited(ctr, run, 139)
                return
            if isinstance(step, processes.Output):
                if ctr.log:
                    with contextlib.suppress(FailedPrecondition):  # removed meanwhile
                        ctr.log.write(step.stream, step.data)
            elif isinstance(step, processes.Sleep):
                if step.seconds == float("inf"):
                    return  # runs until stopped
                self._scheduler.call_later(step.seconds, lambda: self._advance(ctr, run))
                return

    def _exited(self, ctr: Container, run: _Run, code: int) -> None:
        with self._lock:
            if run.cancelled or ctr.run is not run or ctr.item.state != RUNNING:
                return
            event = self._exit_locked(ctr, code)
        self._publish([event])

    def _exit_locked(self, ctr: Container, code: int) -> api_pb2.ContainerEventResponse:
        if ctr.run is not None:
            ctr.run.cancelled = True
            ctr.run.exited.set()
        self._move_locked(ctr, EXITED)
        ctr.status.exit_code = code
        ctr.status.finished_at = _now()
        ctr.status.reason = "Completed" if code == 0 else "Error"
        if ctr.log:
            self._logs_to_close.append(ctr.log)  # closed by _publish, outside the lock
        return self._event_locked(ctr, api_pb2.CONTAINER_STOPPED_EVENT)

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
            if ctr.run is run and ctr.item.state == RUNNING:
                event = self._exit_locked(ctr, EXIT_KILLED)
            else:
                return
        self._publish([event])

    def remove_container(self, container_id: str) -> None:
        events = []
        with self._lock:
            try:
                ctr = self._container(container_id)
            except NotFound:
                return  # unknown or already removed: OK, as in containerd
            if ctr.item.state == RUNNING:
                events.append(self._exit_locked(ctr, EXIT_KILLED))
            events.append(self._remove_container_locked(ctr))
        if ctr.log:
            ctr.log.close()
        self._publish(events)

    def _remove_container_locked(self, ctr: Container) -> api_pb2.ContainerEventResponse:
        del self.containers[ctr.id]
        self._ctr_ids.discard(ctr.id)
        self._ctr_index.remove(ctr.id, ctr.item.state, ctr.item.labels)
        pod = self.pods.get(ctr.pod_id)
        if pod is not None:
            pod.containers.pop(ctr.id, None)
        self._ctr_names.pop((ctr.pod_id, ctr.item.metadata.name, ctr.item.metadata.attempt), None)
        return self._event_locked(ctr, api_pb2.CONTAINER_DELETED_EVENT, pod)

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
        caller that went away never keeps a server thread sleeping.
        """
        _require(cmd, "cmd")
        with self._lock:
            ctr = self._container(container_id)
            if ctr.item.state != RUNNING:
                raise FailedPrecondition(
                    f"container {ctr.id[:13]} is in {container_state_name(ctr.item.state)} "
                    "state: exec needs a RUNNING container (start it first)"
                )
            ctx = self._context(ctr, self.pods[ctr.pod_id])
        result = processes.run_sync(
            processes.spawn(list(cmd), ctx), timeout or None, sleep=self._sleeper(abandoned)
        )
        return api_pb2.ExecSyncResponse(
            stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code
        )

    def _sleeper(self, abandoned: threading.Event | None) -> Callable[[float], None]:
        """``self._sleep``, cut short (DeadlineExceeded) once ``abandoned`` is set."""
        if abandoned is None:
            return self._sleep

        def sleep(seconds: float) -> None:
            if self._sleep is time.sleep:
                abandoned.wait(seconds)
            else:  # an injected clock (tests): sleep with it, then look
                self._sleep(seconds)
            if abandoned.is_set():
                raise DeadlineExceeded(
                    "the caller gave up (cancelled, or its deadline passed), so crilab "
                    "stopped the command"
                )

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
            ctr.log.reopen()

    def update_container_resources(
        self, container_id: str, linux: api_pb2.LinuxContainerResources | None
    ) -> None:
        with self._lock:
            ctr = self._container(container_id)
            if ctr.item.state == EXITED:
                raise FailedPrecondition(
                    f"container {ctr.id[:13]} has exited: resources of an exited container "
                    "cannot change"
                )
            if linux is not None:
                ctr.status.resources.linux.CopyFrom(linux)

    # -- events ----------------------------------------------------------------

    def _event_locked(
        self, ctr: Container, kind: int, pod: Pod | None = None
    ) -> api_pb2.ContainerEventResponse | None:
        if not self.events.subscribers:
            return None  # nobody listens: building it would cost O(containers in the pod)
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
        return event

    def _publish(self, events: list[api_pb2.ContainerEventResponse | None]) -> None:
        with self._lock:
            logs, self._logs_to_close = self._logs_to_close, []
        for log in logs:
            log.close()
        for event in events:
            if event is not None:
                self.events.publish(event)

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
