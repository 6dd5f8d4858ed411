"""Fuzzing: no request, however random, empty, huge or malformed, breaks the fake runtime.

Every RPC of both services is called over a real socket with hypothesis-made
requests, and every method path also gets raw bytes (random, truncated, bad
UTF-8) through a generic channel. Whatever comes in, the runtime answers with
a status that names the caller's mistake, never INTERNAL or UNKNOWN, never
hangs, keeps serving, and its state stays consistent (``check_invariants``).
A stateful test drives the state layer itself (no gRPC) against a model.

``CRILAB_FUZZ_EXAMPLES=N`` raises every example count to at least N (for a long
run, e.g. next to ``make bench``); the defaults keep this file well under a minute.
The number of requests sent is printed at the end and recorded as a JUnit property.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from crilab import FakeRuntime
from crilab.builders import container_config, pod_config
from crilab.client import CHANNEL_OPTIONS
from crilab.runtime.errors import CRIError, FailedPrecondition, NotFound
from crilab.runtime.state import RuntimeState
from crilab.stubs import api_pb2 as pb
from crilab.stubs import api_pb2_grpc

BUSYBOX = "localhost/crilab/busybox:local"
ENV_EXAMPLES = int(os.environ.get("CRILAB_FUZZ_EXAMPLES", "0") or 0)
CALL_TIMEOUT = 3.0  # every call's deadline: nothing the fuzzer sends may take longer
STOP_DEADLINE = 1.5  # StopContainer's: a grace period of >= 1 s may legitimately outlast it

C = grpc.StatusCode
NEVER = {C.INTERNAL, C.UNKNOWN, C.UNAVAILABLE, C.CANCELLED, C.DATA_LOSS}


@pytest.fixture(scope="module", autouse=True)
def _temp_files_stay_in_pytest_tmp(tmp_path_factory) -> Iterator[None]:
    """The runtime's own files (socket, state root) and the builders' default log
    directory go below pytest's tmp, never into the system temp dir."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("tmp")))
        yield


#: How many requests the fuzzer sent (printed when the module ends).
REQUESTS = 0
_count_lock = threading.Lock()


def _counted(call: Callable[..., Any]) -> Callable[..., Any]:
    global REQUESTS
    with _count_lock:
        REQUESTS += 1
    return call


def examples(default: int) -> int:
    return max(default, ENV_EXAMPLES)


def fuzz_settings(default: int) -> settings:
    return settings(
        max_examples=examples(default),
        deadline=None,
        database=None,  # no .hypothesis directory in the working tree
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


# -- the runtime under fuzz: one per module, reused ------------------------------------


class Target:
    """The runtime, a channel to it, and the few objects every example can aim at."""

    def __init__(self, rt: FakeRuntime, logs: Path) -> None:
        self.rt = rt
        self.logs = logs  # every absolute log_directory the fuzzer makes is below this
        self.channel = grpc.insecure_channel(
            rt.endpoint.replace("unix://", "unix:", 1), options=list(CHANNEL_OPTIONS)
        )
        self.rs = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)
        self.seq = 0

    def call(self, stub_method: Callable[..., Any], request: Any, timeout: float = CALL_TIMEOUT):
        """(code, reply or error) of one fuzzed call; counts it."""
        return self.probe(_counted(stub_method), request, timeout)

    def probe(self, stub_method: Callable[..., Any], request: Any, timeout: float = CALL_TIMEOUT):
        """(code, reply or error) of a follow-up call (a health probe, a status, a clean-up):
        not counted among the fuzz requests."""
        try:
            return C.OK, stub_method(request, timeout=timeout)
        except grpc.RpcError as err:
            return err.code(), err

    def stream(self, stub_method: Callable[..., Any], request: Any, timeout: float = CALL_TIMEOUT):
        """(code, list of replies or error) of a server-streaming call."""
        try:
            return C.OK, list(_counted(stub_method)(request, timeout=timeout))
        except grpc.RpcError as err:
            return err.code(), err

    def baseline(self) -> dict[str, str]:
        """Make sure a READY pod with a CREATED, a RUNNING and an EXITED container exists,
        plus a NOTREADY pod and the image, whatever earlier examples removed."""
        state = self.rt.state
        state.pull_image(BUSYBOX)
        with state.locked():
            ready = [  # one of ours: fuzzed pods may have unusable log directories
                p
                for p in state.pods.values()
                if p.sandbox.state == pb.SANDBOX_READY
                and p.config.log_directory == str(self.logs / "base")
            ]
            notready = [p for p in state.pods.values() if p.sandbox.state != pb.SANDBOX_READY]
        if not ready:
            ready_id = self.new_pod()
        else:
            ready_id = ready[0].id
        if not notready:
            state.stop_pod_sandbox(self.new_pod())
        found: dict[int, str] = {}
        with state.locked():
            for cid in state.pods[ready_id].containers:
                found.setdefault(state.containers[cid].item.state, cid)
        if pb.CONTAINER_CREATED not in found:
            found[pb.CONTAINER_CREATED] = self.new_container(ready_id)
        if pb.CONTAINER_RUNNING not in found:
            found[pb.CONTAINER_RUNNING] = cid = self.new_container(ready_id)
            state.start_container(cid)
        if pb.CONTAINER_EXITED not in found:
            cid = self.new_container(ready_id)
            state.start_container(cid)
            state.stop_container(cid, 0)
            found[pb.CONTAINER_EXITED] = cid
        return {
            "pod": ready_id,
            "created": found[pb.CONTAINER_CREATED],
            "running": found[pb.CONTAINER_RUNNING],
            "exited": found[pb.CONTAINER_EXITED],
        }

    def new_pod(self) -> str:
        self.seq += 1
        return self.rt.state.run_pod_sandbox(
            pod_config(f"base-{self.seq}", log_directory=str(self.logs / "base"))
        )

    def new_container(self, pod_id: str) -> str:
        self.seq += 1
        cfg = container_config(f"base-{self.seq}", BUSYBOX, ["sleep", "infinity"])
        return self.rt.state.create_container(pod_id, cfg)

    def tidy(self, keep: int = 12) -> None:
        """Remove what examples made beyond a few pods, so the state stays small."""
        state = self.rt.state
        with state.locked():
            extra = list(state.pods)[keep:]
        for pid in extra:
            state.remove_pod_sandbox(pid)
        with state.locked():
            images = [i for i, r in state.images.items() if BUSYBOX not in r.repo_tags]
        for ident in images[20:]:
            state.remove_image(ident)

    def still_fine(self) -> None:
        """After every example: consistent state, and the server still answers."""
        assert self.rt.state.check_invariants() == []
        code, reply = self.probe(self.rs.Version, pb.VersionRequest(version="v1"))
        assert code == C.OK, reply
        assert reply.runtime_api_version == "v1"


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Iterator[Target]:
    logs = tmp_path_factory.mktemp("fuzz-logs")
    rt = FakeRuntime(images=[BUSYBOX, "busybox"], seed="fuzz", history=2000)
    t = Target(rt, logs)
    LOGS.path = logs
    yield t
    t.channel.close()
    rt.stop()


@pytest.fixture(scope="module", autouse=True)
def _report_count(request, record_testsuite_property) -> Iterator[None]:
    """Print how much was tried, past pytest's capture, and record it in the JUnit XML."""
    yield
    record_testsuite_property("fuzz_requests", REQUESTS)
    record_testsuite_property("fuzz_state_machine_steps", StateMachine.steps)
    line = (
        f"test_fuzz.py: {REQUESTS} fuzz requests sent to the fake runtime, "
        f"{StateMachine.steps} state machine steps"
    )
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.ensure_newline()
        reporter.write_line(line)


class _Logs:
    path: Path | None = None


LOGS = _Logs()  # the module's log root: strategies read it when they draw


def check(code: grpc.StatusCode, reply: Any, *, allow: set[grpc.StatusCode] = frozenset()) -> None:
    """The one rule: a client's input never makes the runtime fail on its side."""
    if code in NEVER or (code == C.DEADLINE_EXCEEDED and code not in allow):
        details = reply.details() if isinstance(reply, grpc.RpcError) else reply
        raise AssertionError(f"{code.name}: {details}")


# -- strategies ---------------------------------------------------------------------

SIZES = (4096, 65_536, 1024 * 1024)
SPECIAL = (
    "",
    " ",
    ".",
    "..",
    "../",
    "../../etc/passwd",
    "/",
    "/etc/passwd",
    "a/../../b",
    "\x00",
    "a\x00b",
    "\n",
    "ñandú",
    "😀",
    "%s%n",
    "$(id)",
    "`id`",
    "A" * 300,
    "-",
    "--help",
)
small_text = st.text(max_size=24)
texts = st.one_of(
    small_text,
    st.sampled_from(SPECIAL),
    # huge: 1 MiB of ASCII, or 256 KiB of 4-byte characters (a request stays under 16 MiB)
    st.sampled_from(SIZES).map(lambda n: "x" * n),
    st.sampled_from(SIZES).map(lambda n: "😀" * (n // 4)),
)
label_maps = st.one_of(
    st.dictionaries(small_text, small_text, max_size=6),
    st.dictionaries(st.sampled_from(SPECIAL), texts, max_size=3),
    st.just(10_000).map(lambda n: {f"k{i}": f"v{i}" for i in range(n)}),  # 10k labels
    st.just({"big": "v" * (1024 * 1024)}),
)
uint32 = st.one_of(st.integers(0, 3), st.integers(0, 2**32 - 1))
int64 = st.one_of(st.integers(-3, 3), st.integers(-(2**63), 2**63 - 1))
enum_values = st.one_of(st.integers(0, 3), st.integers(-(2**31), 2**31 - 1))


def _under_logs(sub: str) -> str:
    assert LOGS.path is not None
    return str(LOGS.path / "dirs" / sub)


# Absolute directories only ever below the module's tmp dir; relative ones and '..'
# are drawn too, and must be refused (nothing is written for them).
safe_segment = st.text(
    alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))
log_directories = st.one_of(
    st.just(""),
    st.lists(safe_segment, min_size=1, max_size=3).map(lambda p: _under_logs("/".join(p))),
    st.sampled_from(["logs", "./logs", "../logs", "a/../../b", "~/logs"]),  # relative
    st.sampled_from(["/..", "/../..", "/x/../..", "/x/.."]).map(lambda s: _under_logs("") + s),
    st.sampled_from(["\x00", "a\x00b"]).map(lambda s: _under_logs(s)),
    st.just(300).map(lambda n: _under_logs("d" * n)),  # a name too long for the filesystem
)


@st.composite
def pod_configs(draw) -> pb.PodSandboxConfig:
    cfg = pb.PodSandboxConfig()
    if draw(st.integers(0, 9)):  # mostly with metadata, sometimes without
        cfg.metadata.name = draw(texts)
        cfg.metadata.namespace = draw(texts)
        cfg.metadata.uid = draw(texts)
        cfg.metadata.attempt = draw(uint32)
    cfg.hostname = draw(texts)
    cfg.log_directory = draw(log_directories)
    cfg.labels.update(draw(label_maps))
    cfg.annotations.update(draw(label_maps))
    ns = cfg.linux.security_context.namespace_options
    ns.network = draw(enum_values)
    ns.pid = draw(enum_values)
    for _ in range(draw(st.integers(0, 2))):
        cfg.port_mappings.add(
            protocol=draw(enum_values),
            container_port=draw(st.integers(-(2**31), 2**31 - 1)),
            host_port=draw(st.integers(-(2**31), 2**31 - 1)),
            host_ip=draw(texts),
        )
    cfg.dns_config.servers.extend(draw(st.lists(texts, max_size=3)))
    return cfg


image_refs = st.one_of(
    st.sampled_from([BUSYBOX, "busybox", "busybox:latest", "docker.io/library/busybox"]),
    st.sampled_from(
        [
            "nginx:1.27",
            "quay.io/x/y:1",
            "localhost:5000/a/b",
            "UPPER/case",
            "a@sha256:" + "0" * 64,
            "a@sha256:xyz",
            "sha256:",
            "sha256:0",
            "0" * 12,
            "f" * 64,
            "F" * 64,
            "host.invalid/x",
            "a:",
            ":tag",
            "a b",
            "a" * 300,
        ]
    ),
    texts,
)
argvs = st.lists(texts, max_size=5)


@st.composite
def container_configs(draw) -> pb.ContainerConfig:
    cfg = pb.ContainerConfig()
    if draw(st.integers(0, 9)):
        cfg.metadata.name = draw(texts)
        cfg.metadata.attempt = draw(uint32)
    cfg.image.image = draw(image_refs)
    cfg.command.extend(draw(argvs))
    cfg.args.extend(draw(argvs))
    cfg.working_dir = draw(texts)
    for key, value in draw(st.dictionaries(texts, st.binary(max_size=20), max_size=4)).items():
        cfg.envs.add(key=key, value=value)  # bytes in this contract: invalid UTF-8 too
    cfg.labels.update(draw(label_maps))
    cfg.annotations.update(draw(label_maps))
    cfg.log_path = draw(
        st.one_of(
            st.just(""),  # the default, NAME/ATTEMPT.log: a long or odd name is the path
            texts,
            st.sampled_from(["../x.log", "../../x.log", "a/../../x.log", "/abs.log", "./a.log"]),
        )
    )
    cfg.tty = draw(st.booleans())
    cfg.linux.security_context.namespace_options.pid = draw(enum_values)
    return cfg


def request_type(method: str) -> type:
    """The request message class of an RPC, from the service descriptors."""
    for service in pb.DESCRIPTOR.services_by_name.values():
        if method in service.methods_by_name:
            return getattr(pb, service.methods_by_name[method].input_type.name)
    raise KeyError(method)


# IDs are drawn as recipes and resolved against the state at run time: a draw that
# depended on the state would make hypothesis's data generation flaky.
HEX = "0123456789abcdef"
any_index = st.integers(0, 999)
id_recipes = st.one_of(
    st.tuples(st.just("real"), any_index),
    st.tuples(st.just("prefix"), any_index, st.integers(1, 64)),
    st.tuples(st.just("prefix"), any_index, st.just(1)),  # 1-char: often ambiguous
    st.tuples(st.just("upper"), any_index),
    st.tuples(st.just("longer"), any_index),  # 65 characters
    st.tuples(st.just("spaced"), any_index),  # a 13-char crictl ID with a trailing space
    st.tuples(
        st.just("text"),
        st.one_of(
            st.just(""),
            st.text(alphabet=HEX, min_size=1, max_size=64),
            st.sampled_from(HEX),
            st.just("0" * 65),
            texts,
        ),
    ),
)


def resolve(recipe: tuple, known: list[str]) -> str:
    """The ID a recipe stands for, given the IDs that exist now."""
    kind = recipe[0]
    if kind == "text":
        return recipe[1]
    if not known:
        return "0" * 64
    real = known[recipe[1] % len(known)]
    if kind == "prefix":
        return real[: recipe[2]]
    return {
        "real": real,
        "upper": real.upper(),
        "longer": real + "0",
        "spaced": real[:13] + " ",
    }[kind]


# -- typed fuzzing, RPC by RPC ----------------------------------------------------------


@fuzz_settings(200)
@given(cfg=pod_configs(), handler=st.one_of(st.sampled_from(["", "runc"]), texts))
def test_run_pod_sandbox(target: Target, cfg: pb.PodSandboxConfig, handler: str) -> None:
    target.baseline()
    code, reply = target.call(
        target.rs.RunPodSandbox, pb.RunPodSandboxRequest(config=cfg, runtime_handler=handler)
    )
    check(code, reply)
    if code == C.OK:
        assert cfg.metadata.name, "a pod without a name was accepted"
        assert handler in ("", "runc"), f"runtime handler {handler!r} was accepted"
        assert not cfg.log_directory or cfg.log_directory.startswith(str(target.logs))
        assert ".." not in cfg.log_directory.split("/"), "a log_directory with '..' was taken"
        code, status = target.probe(
            target.rs.PodSandboxStatus,
            pb.PodSandboxStatusRequest(pod_sandbox_id=reply.pod_sandbox_id, verbose=True),
        )
        check(code, status)
        assert status.status.metadata == cfg.metadata
        code, reply = target.probe(
            target.rs.RemovePodSandbox,
            pb.RemovePodSandboxRequest(pod_sandbox_id=reply.pod_sandbox_id),
        )
        assert code == C.OK
    else:
        allowed = (C.INVALID_ARGUMENT, C.ALREADY_EXISTS, C.RESOURCE_EXHAUSTED)
        if handler not in ("", "runc"):  # an unknown handler: NOT_FOUND (or a config mistake)
            allowed += (C.NOT_FOUND,)
        assert code in allowed, reply.details()
    target.still_fine()


@fuzz_settings(200)
@given(
    cfg=container_configs(),
    pod=st.one_of(st.just(None), id_recipes, log_directories),
    start=st.booleans(),
)
def test_create_container(
    target: Target, cfg: pb.ContainerConfig, pod: tuple | str | None, start: bool
) -> None:
    base = target.baseline()
    with target.rt.state.locked():
        pods = list(target.rt.state.pods)
    if isinstance(pod, str):  # a fresh pod with this log_directory, when it is accepted
        target.seq += 1
        pod_cfg = pod_config(f"logs-{target.seq}", log_directory=str(target.logs))
        pod_cfg.log_directory = pod  # "" too: then the runtime's own directory
        try:
            pod_id = target.rt.state.run_pod_sandbox(pod_cfg)
        except CRIError:
            pod_id = base["pod"]
    else:
        pod_id = base["pod"] if pod is None else resolve(pod, pods)
    request = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg)
    code, reply = target.call(target.rs.CreateContainer, request)
    check(code, reply)
    if code == C.OK:
        cid = reply.container_id
        code, status = target.probe(
            target.rs.ContainerStatus, pb.ContainerStatusRequest(container_id=cid)
        )
        assert code == C.OK
        log_path = status.status.log_path
        root = str(target.rt.state.root)
        assert log_path.startswith((str(target.logs), root)), log_path
        assert ".." not in log_path.split("/")
        if start:  # whatever the command, the simulated process runs or fails, never crashes
            code, reply = target.call(
                target.rs.StartContainer, pb.StartContainerRequest(container_id=cid)
            )
            check(code, reply)
            assert code in (C.OK, C.FAILED_PRECONDITION), reply
        code, reply = target.probe(
            target.rs.RemoveContainer, pb.RemoveContainerRequest(container_id=cid)
        )
        assert code == C.OK, reply
    else:
        allowed = (C.INVALID_ARGUMENT, C.NOT_FOUND, C.ALREADY_EXISTS, C.RESOURCE_EXHAUSTED)
        assert code in allowed, reply.details()
    target.still_fine()


CONTAINER_RPCS = (
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "ContainerStatus",
    "ReopenContainerLog",
    "UpdateContainerResources",
    "ContainerStats",
    "Exec",
    "Attach",
    "CheckpointContainer",
)


@fuzz_settings(400)
@given(
    recipe=id_recipes,
    method=st.sampled_from(CONTAINER_RPCS),
    timeout=int64,
    numbers=st.tuples(int64, int64),
    flag=st.booleans(),
)
def test_container_rpcs_with_random_ids(
    target: Target, recipe: tuple, method: str, timeout: int, numbers: tuple, flag: bool
) -> None:
    target.baseline()
    with target.rt.state.locked():
        known = list(target.rt.state.containers)
    cid = resolve(recipe, known)
    stub = getattr(target.rs, method)
    request = request_type(method)(container_id=cid)
    deadline, allow = CALL_TIMEOUT, set()
    if method == "StopContainer":
        request.timeout = timeout
        deadline = STOP_DEADLINE
        if timeout >= 1:  # a PID 1 shell ignores SIGTERM: the grace period is waited out
            allow = {C.DEADLINE_EXCEEDED}
    elif method == "UpdateContainerResources":
        request.linux.cpu_shares, request.linux.memory_limit_in_bytes = numbers
    elif method in ("Exec", "Attach"):
        request.tty = flag
    t0 = time.monotonic()
    code, reply = target.call(stub, request, timeout=deadline)
    check(code, reply, allow=allow)
    assert time.monotonic() - t0 < deadline + 1, f"{method} outlived its deadline"
    target.tidy()
    target.still_fine()


POD_RPCS = (
    "StopPodSandbox",
    "RemovePodSandbox",
    "PodSandboxStatus",
    "PodSandboxStats",
    "UpdatePodSandboxResources",
    "PortForward",
)


@fuzz_settings(200)
@given(
    recipe=id_recipes,
    method=st.sampled_from(POD_RPCS),
    verbose=st.booleans(),
    ports=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=3),
)
def test_pod_rpcs_with_random_ids(
    target: Target, recipe: tuple, method: str, verbose: bool, ports: list[int]
) -> None:
    target.baseline()
    with target.rt.state.locked():
        known = list(target.rt.state.pods)
    pid = resolve(recipe, known)
    stub = getattr(target.rs, method)
    request = request_type(method)(pod_sandbox_id=pid)
    if method == "PodSandboxStatus":
        request.verbose = verbose
    elif method == "PortForward":
        request.port.extend(ports)
    code, reply = target.call(stub, request)
    check(code, reply)
    target.still_fine()


# Commands that end at once (ExecSync with no timeout waits for the command) ...
quick_cmds = st.one_of(
    argvs,
    st.tuples(
        st.sampled_from(
            ["echo", "printf", "cat", "ls", "env", "id", "whoami", "pwd", "date", "uname"]
        ),
        st.lists(texts, max_size=3),
    ).map(lambda t: [t[0], *t[1]]),
    st.tuples(st.sampled_from(["sh", "bash"]), small_text).map(lambda t: [t[0], "-c", t[1]]),
    st.sampled_from(
        [
            ["sh", "-c", "exit 3"],
            ["sh", "-c", "echo out; echo err >&2"],
            ["sh", "-c", "for i in 1 2 3; do echo $i; done"],
            ["sh", "-c", "X=a; X=$X$X$X; echo ${X}"],
            ["sh", "-c", "cat /etc/hostname /nope"],
            ["sh", "-c", "(echo"],
            ["sh", "-c", "sh -c 'sh -c \"echo deep\"'"],
            ["sleep", "0.05"],
            ["exit", "7"],
            ["true"],
            ["false"],
        ]
    ),
)
# ... and commands that may run past any deadline: only with an ExecSync timeout.
slow_cmds = st.one_of(
    quick_cmds,
    st.tuples(st.sampled_from(["0", "0.2", "1", "3", "inf", "x", "-1", "1e9"])).map(
        lambda t: ["sleep", t[0]]
    ),
    st.sampled_from(
        [
            ["sh", "-c", "while true; do :; done"],
            ["sh", "-c", "while true; do echo spam; done"],
            ["top"],
            ["pause"],
            ["nginx", "-g", "daemon off;"],
        ]
    ),
)


# ... and ExecSync timeouts over the whole int64 range (an int64 overflowed a wait once):
# a command that never ends then outlives the call, whose short deadline must free the server.
huge_timeouts = st.one_of(
    st.integers(3, 2**63 - 1),
    st.integers(-(2**63), -1),
    st.sampled_from([10**10, 2**31, 2**63 - 1]),
)
endless_cmds = st.sampled_from(
    [["sleep", "infinity"], ["sleep", "9999999999"], ["sh", "-c", "sleep 1e3; sleep 99999999999"]]
)
HUGE_TIMEOUT_DEADLINE = 0.2  # the call's deadline when the command's timeout is huge


@fuzz_settings(160)
@given(
    recipe=st.one_of(st.just(None), id_recipes),
    case=st.one_of(
        st.tuples(st.just(0), quick_cmds),
        st.tuples(st.integers(1, 2), slow_cmds),
        st.tuples(huge_timeouts, st.one_of(endless_cmds, quick_cmds)),
    ),
)
@example(recipe=None, case=(10**10, ["sleep", "infinity"]))  # the audit's case: was INTERNAL
@example(recipe=None, case=(2**63 - 1, ["sleep", "infinity"]))
@example(recipe=None, case=(-(2**63), ["sleep", "infinity"]))
def test_exec_sync(target: Target, recipe: tuple | None, case: tuple[int, list[str]]) -> None:
    base = target.baseline()
    timeout, cmd = case
    with target.rt.state.locked():
        known = list(target.rt.state.containers)
    cid = base["running"] if recipe is None else resolve(recipe, known)
    request = pb.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout)
    huge = not 0 <= timeout <= 2
    # the kubelet's deadline for ExecSync: its usual one plus the command's timeout
    deadline = HUGE_TIMEOUT_DEADLINE if huge else CALL_TIMEOUT + timeout
    t0 = time.monotonic()
    code, reply = target.call(target.rs.ExecSync, request, timeout=deadline)
    check(code, reply, allow={C.DEADLINE_EXCEEDED} if timeout else set())
    if code == C.DEADLINE_EXCEEDED and not huge:  # the runtime's own limit, before the call's
        assert time.monotonic() - t0 < timeout + 1.5
    if huge:  # the server's side of the exec ended with the call, whatever the timeout
        state = target.rt.state
        end = time.monotonic() + 5
        while time.monotonic() < end:
            with state.locked():
                ctr = state.containers.get(cid)
                if ctr is None or not ctr.execs:
                    break
            time.sleep(0.01)
        else:
            raise AssertionError(f"ExecSync timeout={timeout} {cmd!r} kept running on the server")
    target.still_fine()


@fuzz_settings(200)
@given(
    method=st.sampled_from(["PullImage", "ImageStatus", "RemoveImage", "ListImages"]),
    ref=st.one_of(image_refs, st.tuples(st.sampled_from(["", "sha256:"]), id_recipes)),
    verbose=st.booleans(),
)
def test_image_rpcs(target: Target, method: str, ref: Any, verbose: bool) -> None:
    target.baseline()
    with target.rt.state.locked():
        ids = [i.removeprefix("sha256:") for i in target.rt.state.images]
    if isinstance(ref, tuple):  # an image ID, or a prefix of one, with or without sha256:
        ref = ref[0] + resolve(ref[1], ids)
    spec = pb.ImageSpec(image=ref)
    stub = getattr(target.images, method)
    if method == "ListImages":
        request = pb.ListImagesRequest(filter=pb.ImageFilter(image=spec))
    elif method == "ImageStatus":
        request = pb.ImageStatusRequest(image=spec, verbose=verbose)
    else:
        request = request_type(method)(image=spec)
    code, reply = target.call(stub, request)
    check(code, reply)
    if code != C.OK:
        assert code in (C.INVALID_ARGUMENT, C.NOT_FOUND), reply.details()
    target.tidy()
    target.still_fine()


LISTS = (
    "ListPodSandbox",
    "StreamPodSandboxes",
    "ListContainers",
    "StreamContainers",
    "ListContainerStats",
    "StreamContainerStats",
    "ListPodSandboxStats",
    "StreamPodSandboxStats",
    "ListPodSandboxMetrics",
    "StreamPodSandboxMetrics",
    "StreamImages",
)


optional_ids = st.one_of(st.none(), id_recipes)
optional_states = st.one_of(st.none(), enum_values)


@fuzz_settings(240)
@given(
    method=st.sampled_from(LISTS),
    no_filter=st.integers(0, 5).map(lambda n: n == 0),
    ids=st.tuples(optional_ids, optional_ids, optional_ids),
    states=st.tuples(optional_states, optional_states),
    labels=label_maps,
)
def test_lists_with_random_filters(
    target: Target, method: str, no_filter: bool, ids: tuple, states: tuple, labels: dict
) -> None:
    target.baseline()
    state = target.rt.state
    with state.locked():
        pods, ctrs = list(state.pods), list(state.containers)
    pod_id, ctr_id, ctr_pod = (
        "" if recipe is None else resolve(recipe, known)
        for recipe, known in zip(ids, (pods, ctrs, pods), strict=True)
    )
    pflt = None if no_filter else pb.PodSandboxFilter(id=pod_id, label_selector=labels)
    if pflt is not None and states[0] is not None:
        pflt.state.state = states[0]
    cflt = pb.ContainerFilter(id=ctr_id, pod_sandbox_id=ctr_pod, label_selector=labels)
    if states[1] is not None:
        cflt.state.state = states[1]
    requests = {
        "ListPodSandbox": pb.ListPodSandboxRequest(filter=pflt),
        "StreamPodSandboxes": pb.StreamPodSandboxesRequest(filter=pflt),
        "ListContainers": pb.ListContainersRequest(filter=cflt),
        "StreamContainers": pb.StreamContainersRequest(filter=cflt),
        "ListContainerStats": pb.ListContainerStatsRequest(
            filter=pb.ContainerStatsFilter(
                id=cflt.id, pod_sandbox_id=cflt.pod_sandbox_id, label_selector=cflt.label_selector
            )
        ),
        "StreamContainerStats": pb.StreamContainerStatsRequest(
            filter=pb.ContainerStatsFilter(id=cflt.id, label_selector=cflt.label_selector)
        ),
        "ListPodSandboxStats": pb.ListPodSandboxStatsRequest(
            filter=pb.PodSandboxStatsFilter(id=cflt.pod_sandbox_id)
        ),
        "StreamPodSandboxStats": pb.StreamPodSandboxStatsRequest(
            filter=pb.PodSandboxStatsFilter(label_selector=cflt.label_selector)
        ),
        "ListPodSandboxMetrics": pb.ListPodSandboxMetricsRequest(),
        "StreamPodSandboxMetrics": pb.StreamPodSandboxMetricsRequest(),
        "StreamImages": pb.StreamImagesRequest(
            filter=pb.ImageFilter(image=pb.ImageSpec(image=cflt.id))
        ),
    }
    request = requests[method]
    stub = getattr(target.images if method == "StreamImages" else target.rs, method)
    if method.startswith("Stream"):
        code, reply = target.stream(stub, request)
    else:
        code, reply = target.call(stub, request)
    check(code, reply)
    assert code == C.OK, reply.details()
    # what a filter selects really matches it (the runtime filters, not the client)
    if method == "ListContainers":
        for ctr in reply.containers:
            assert ctr.id.startswith(cflt.id) and ctr.pod_sandbox_id.startswith(cflt.pod_sandbox_id)
            assert not cflt.HasField("state") or ctr.state == cflt.state.state
            assert all(ctr.labels.get(k) == v for k, v in cflt.label_selector.items())
    elif method == "ListPodSandbox" and pflt is not None:
        for pod in reply.items:
            assert pod.id.startswith(pflt.id)
            assert not pflt.HasField("state") or pod.state == pflt.state.state
            assert all(pod.labels.get(k) == v for k, v in pflt.label_selector.items())
    target.still_fine()


@fuzz_settings(80)
@given(
    method=st.sampled_from(
        [
            "Version",
            "Status",
            "RuntimeConfig",
            "UpdateRuntimeConfig",
            "ListMetricDescriptors",
            "ImageFsInfo",
        ]
    ),
    text=texts,
    verbose=st.booleans(),
)
def test_runtime_rpcs(target: Target, method: str, text: str, verbose: bool) -> None:
    stub = getattr(target.images if method == "ImageFsInfo" else target.rs, method)
    request = request_type(method)()
    if method == "Version":
        request.version = text
    elif method == "Status":
        request.verbose = verbose
    elif method == "UpdateRuntimeConfig":
        request.runtime_config.network_config.pod_cidr = text
    code, reply = target.call(stub, request)
    check(code, reply)
    assert code == C.OK
    target.still_fine()


def test_get_container_events_with_odd_deadlines(target: Target) -> None:
    """A watch ends at its deadline (the only DEADLINE_EXCEEDED that is normal here)."""
    for timeout in (0.001, 0.05, 0.3):
        code, reply = target.stream(
            target.rs.GetContainerEvents, pb.GetEventsRequest(), timeout=timeout
        )
        check(code, reply, allow={C.DEADLINE_EXCEEDED})
    deadline = time.monotonic() + 5
    while target.rt.state.events.subscribers and time.monotonic() < deadline:
        time.sleep(0.02)
    assert target.rt.state.events.subscribers == 0
    target.still_fine()


# -- raw bytes: every method path, any bytes ---------------------------------------------


def _methods() -> list[tuple[str, Any]]:
    out = []
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            out.append((f"/{service.full_name}/{method.name}", method))
    return out


METHODS = _methods()


def _bad_utf8(field: int) -> bytes:
    return bytes([(field << 3) | 2, 2, 0xFF, 0xFE])  # a string field with invalid UTF-8


def _sample_request(method: Any) -> bytes:
    """A real request of the method's type with most of its fields set, serialized."""
    cls = getattr(pb, method.input_type.name)
    msg = cls()
    for fld in cls.DESCRIPTOR.fields:
        if fld.is_repeated or fld.message_type is not None:
            continue
        if fld.type == fld.TYPE_STRING:
            setattr(msg, fld.name, "0123456789abcdef")
        elif fld.type == fld.TYPE_BOOL:
            setattr(msg, fld.name, True)
        elif fld.type in (fld.TYPE_INT64, fld.TYPE_INT32, fld.TYPE_UINT32, fld.TYPE_UINT64):
            setattr(msg, fld.name, 1)
    return msg.SerializeToString()


garbage = st.one_of(
    st.binary(max_size=64),
    st.binary(min_size=64, max_size=4096),
    st.integers(1, 15).map(_bad_utf8),
    st.just(b"\x0a\xff\xff\xff\xff\x0f"),  # a length far past the end
    st.just(b"\x0a" * 200 + b"\x00"),  # deeply nested (or truncated) sub-messages
    st.just(b"\x08"),  # a tag with no value
    st.just(b"\xff" * 11),  # an over-long varint
    st.just(b"\x07"),  # wire type 7 does not exist
)


@fuzz_settings(800)
@given(
    index=st.integers(0, len(METHODS) - 1),
    payload=st.one_of(garbage, st.tuples(st.just("truncate"), st.integers(0, 200))),
)
def test_raw_bytes_on_every_method(target: Target, index: int, payload: Any) -> None:
    path, method = METHODS[index]
    if isinstance(payload, tuple):  # a real request cut short
        whole = _sample_request(method)
        assume(payload[1] < len(whole))
        payload = whole[: payload[1]]
    streaming = method.server_streaming
    kind = target.channel.unary_stream if streaming else target.channel.unary_unary
    call = kind(path, request_serializer=None, response_deserializer=None)
    timeout = 0.3 if method.name == "GetContainerEvents" else CALL_TIMEOUT
    try:
        reply = _counted(call)(payload, timeout=timeout)
        if streaming:
            list(reply)
        code, err = C.OK, None
    except grpc.RpcError as exc:
        code, err = exc.code(), exc
    allow = {C.DEADLINE_EXCEEDED} if method.name == "GetContainerEvents" else set()
    check(code, err, allow=allow)
    target.tidy()
    target.still_fine()


def test_malformed_request_is_invalid_argument_and_recorded(target: Target) -> None:
    call = target.channel.unary_unary(
        "/runtime.v1.RuntimeService/RunPodSandbox",
        request_serializer=None,
        response_deserializer=None,
    )
    with pytest.raises(grpc.RpcError) as caught:
        _counted(call)(_bad_utf8(1), timeout=CALL_TIMEOUT)
    assert caught.value.code() == C.INVALID_ARGUMENT
    assert "runtime.v1.RunPodSandboxRequest" in caught.value.details()
    last = target.rt.calls_to("RunPodSandbox")[-1]
    assert last.code == "INVALID_ARGUMENT"
    assert "malformed" in str(last.request)


def test_an_empty_id_prefix_names_no_image(tmp_path: Path) -> None:
    """With one image, "sha256:" (no hex) was a unique prefix of its ID: RemoveImage
    removed it. An empty prefix names nothing."""
    state = RuntimeState(images=[BUSYBOX], root=tmp_path / "state")
    try:
        assert len(state.images) == 1
        assert not state.image_status("sha256:").HasField("image")
        state.remove_image("sha256:")
        assert len(state.images) == 1
        ident = next(iter(state.images))
        assert state.image_status(ident[:10]).image.id == ident  # a real prefix still works
    finally:
        state.close()


def test_unknown_method_paths(target: Target) -> None:
    before = len(target.rt.instrument._handlers)
    for i in range(300):
        call = target.channel.unary_unary(
            f"/runtime.v1.RuntimeService/Nope{i}",
            request_serializer=None,
            response_deserializer=None,
        )
        with pytest.raises(grpc.RpcError) as caught:
            _counted(call)(b"", timeout=CALL_TIMEOUT)
        assert caught.value.code() == C.UNIMPLEMENTED
    # the interceptor's cache holds real methods only, not every path a client made up
    assert len(target.rt.instrument._handlers) <= max(before, len(METHODS))
    target.still_fine()


def test_huge_ids_keep_their_status_code(target: Target) -> None:
    """An error that quotes a 1 MiB ID must still arrive as NOT_FOUND (not a trailer
    too big for the client, which grpc reports as RESOURCE_EXHAUSTED)."""
    for size in (20_000, 1024 * 1024):
        code, reply = target.call(
            target.rs.ContainerStatus, pb.ContainerStatusRequest(container_id="é" * size)
        )
        assert code == C.NOT_FOUND, reply.details()
        assert len(reply.details().encode()) < 4096
        assert reply.details().endswith("crictl ps -a)")  # the advice survives the cut


# -- the state layer as a state machine (no gRPC) ----------------------------------------

ORDER = {pb.CONTAINER_CREATED: 0, pb.CONTAINER_RUNNING: 1, pb.CONTAINER_EXITED: 2}
COMMANDS = {
    "forever": ["sleep", "infinity"],
    "shell": ["sh", "-c", "while true; do sleep 1; done"],
    "quick": ["echo", "hi"],  # exits by itself: RUNNING, then EXITED on its own
    "fails": ["sh", "-c", "exit 3"],
}
IMAGES = ["busybox", "nginx:1.27", "quay.io/x/y:1"]


class StateMachine(RuleBasedStateMachine):
    """Random lifecycles against a plain model of what must exist."""

    root: Path  # set by the test below (a pytest tmp dir)
    runs = 0
    steps = 0  # rules run, over all runs

    pods = Bundle("pods")
    containers = Bundle("containers")

    def __init__(self) -> None:
        super().__init__()
        StateMachine.runs += 1
        run_root = self.root / f"run-{StateMachine.runs}"
        self.state = RuntimeState(images=[BUSYBOX], seed=StateMachine.runs, root=run_root)
        self.logs = str(run_root / "logs")
        # the model: pod -> READY?, container -> (pod, lowest state it can be in, command)
        self.model_pods: dict[str, bool] = {}
        self.model_ctrs: dict[str, tuple[str, int, str]] = {}
        self.model_images: set[str] = {self.state.pull_image(BUSYBOX)}
        self.seen: dict[str, int] = {}  # the latest state observed, per container
        self.n = 0

    def teardown(self) -> None:
        self.state.close()

    # -- rules ---------------------------------------------------------------

    @rule(target=pods)
    def run_pod(self) -> str:
        self.n += 1
        pid = self.state.run_pod_sandbox(pod_config(f"p{self.n}", log_directory=self.logs))
        self.model_pods[pid] = True
        return pid

    @rule(pod=pods)
    def stop_pod(self, pod: str) -> None:
        if pod not in self.model_pods:
            with pytest.raises(NotFound):
                self.state.stop_pod_sandbox(pod)
            return
        self.state.stop_pod_sandbox(pod)
        self.model_pods[pod] = False
        for cid, (owner, low, cmd) in self.model_ctrs.items():
            if owner == pod and low == pb.CONTAINER_RUNNING:  # killed; CREATED ones stay
                self.model_ctrs[cid] = (owner, pb.CONTAINER_EXITED, cmd)

    @rule(pod=consumes(pods))
    def remove_pod(self, pod: str) -> None:
        self.state.remove_pod_sandbox(pod)  # removing what is gone is fine too
        self.model_pods.pop(pod, None)
        for cid in [c for c, (owner, _, _) in self.model_ctrs.items() if owner == pod]:
            del self.model_ctrs[cid]

    @rule(target=containers, pod=pods, command=st.sampled_from(sorted(COMMANDS)))
    def create(self, pod: str, command: str):
        self.n += 1
        cfg = container_config(f"c{self.n}", BUSYBOX, COMMANDS[command])
        image_gone = self.state.image_status(BUSYBOX).image.id == ""
        if pod not in self.model_pods or not self.model_pods[pod] or image_gone:
            with pytest.raises(NotFound):
                self.state.create_container(pod, cfg)
            return multiple()
        cid = self.state.create_container(pod, cfg)
        self.model_ctrs[cid] = (pod, pb.CONTAINER_CREATED, command)
        return cid

    @rule(ctr=containers)
    def start(self, ctr: str) -> None:
        if ctr not in self.model_ctrs:
            with pytest.raises(NotFound):
                self.state.start_container(ctr)
            return
        pod, low, command = self.model_ctrs[ctr]
        if low != pb.CONTAINER_CREATED or not self.model_pods[pod]:
            with pytest.raises(FailedPrecondition):
                self.state.start_container(ctr)
            return
        self.state.start_container(ctr)
        self.model_ctrs[ctr] = (pod, pb.CONTAINER_RUNNING, command)

    @rule(ctr=containers)
    def stop(self, ctr: str) -> None:
        if ctr not in self.model_ctrs:
            with pytest.raises(NotFound):
                self.state.stop_container(ctr, 0)
            return
        self.state.stop_container(ctr, 0)
        pod, low, command = self.model_ctrs[ctr]
        if low == pb.CONTAINER_RUNNING:
            self.model_ctrs[ctr] = (pod, pb.CONTAINER_EXITED, command)
            assert self._state_of(ctr) == pb.CONTAINER_EXITED

    @rule(ctr=consumes(containers))
    def remove(self, ctr: str) -> None:
        self.state.remove_container(ctr)
        self.model_ctrs.pop(ctr, None)

    @rule(ctr=containers, cmd=st.sampled_from([["echo", "x"], ["sh", "-c", "exit 2"], ["id"]]))
    def exec(self, ctr: str, cmd: list[str]) -> None:
        if ctr not in self.model_ctrs:
            with pytest.raises(NotFound):
                self.state.exec_sync(ctr, cmd, 1)
            return
        _, low, command = self.model_ctrs[ctr]
        try:
            result = self.state.exec_sync(ctr, cmd, 1)
        except FailedPrecondition:
            # not running: never started, stopped, or a command that ended by itself
            assert low != pb.CONTAINER_RUNNING or command in ("quick", "fails")
        else:
            assert low == pb.CONTAINER_RUNNING
            if result.exit_code == 137:  # killed: its container ended by itself meanwhile
                assert command in ("quick", "fails")
            else:
                assert result.exit_code in (0, 2)

    @rule(ref=st.sampled_from(IMAGES))
    def pull_image(self, ref: str) -> None:
        self.model_images.add(self.state.pull_image(ref))

    @rule(ref=st.sampled_from([*IMAGES, BUSYBOX]))
    def remove_image(self, ref: str) -> None:
        found = self.state.image_status(ref).image.id
        self.state.remove_image(ref)
        self.model_images.discard(found)
        assert self.state.image_status(ref).image.id == ""

    # -- invariants ----------------------------------------------------------

    def _state_of(self, ctr: str) -> int:
        return self.state.containers[ctr].item.state

    @invariant()
    def consistent(self) -> None:
        StateMachine.steps += 1  # invariants run after every rule (and once at the start)
        assert self.state.check_invariants() == []

    @invariant()
    def states_never_go_backwards(self) -> None:
        with self.state.locked():
            now = {cid: c.item.state for cid, c in self.state.containers.items()}
        for cid, state in now.items():
            assert ORDER[state] >= ORDER[self.seen.get(cid, state)], (
                f"container {cid[:8]} went back to {pb.ContainerState.Name(state)}"
            )
            self.seen[cid] = state

    @invariant()
    def nothing_runs_in_a_stopped_pod(self) -> None:
        with self.state.locked():
            for ctr in self.state.containers.values():
                pod = self.state.pods[ctr.pod_id]
                if pod.sandbox.state == pb.SANDBOX_NOTREADY:
                    assert ctr.item.state != pb.CONTAINER_RUNNING

    @invariant()
    def lists_agree_with_the_model(self) -> None:
        pods = {p.id: p.state for p in self.state.list_pod_sandbox()}
        assert pods == {
            pid: pb.SANDBOX_READY if ready else pb.SANDBOX_NOTREADY
            for pid, ready in self.model_pods.items()
        }
        ctrs = {c.id: c for c in self.state.list_containers()}
        assert set(ctrs) == set(self.model_ctrs)
        for cid, (pod, low, command) in self.model_ctrs.items():
            assert ctrs[cid].pod_sandbox_id == pod
            state = ctrs[cid].state
            if low == pb.CONTAINER_RUNNING and command in ("quick", "fails"):
                assert state in (pb.CONTAINER_RUNNING, pb.CONTAINER_EXITED)
            else:
                assert state == low
        for pod in self.model_pods:
            listed = {
                c.id for c in self.state.list_containers(pb.ContainerFilter(pod_sandbox_id=pod))
            }
            assert listed == {c for c, (owner, _, _) in self.model_ctrs.items() if owner == pod}
        created = {
            c.id
            for c in self.state.list_containers(
                pb.ContainerFilter(state=pb.ContainerStateValue(state=pb.CONTAINER_CREATED))
            )
        }
        assert created == {c for c, (_, low, _) in self.model_ctrs.items() if low == 0}
        assert {i.id for i in self.state.list_images()} == self.model_images


def test_state_machine(tmp_path: Path) -> None:
    StateMachine.root = tmp_path
    run_state_machine_as_test(
        StateMachine,
        settings=settings(
            max_examples=examples(100),
            stateful_step_count=40,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_errors_are_domain_errors_only(tmp_path: Path) -> None:
    """The state layer raises CRIError subclasses for bad input, nothing else."""
    state = RuntimeState(images=[BUSYBOX], root=tmp_path / "state")
    try:
        pid = state.run_pod_sandbox(pod_config("p", log_directory=str(tmp_path / "logs")))
        bad = [
            lambda: state.create_container(pid, container_config("x" * 300, BUSYBOX, ["true"])),
            lambda: state.create_container(
                pid, container_config("a", BUSYBOX, ["true"], log_path="a\x00b")
            ),
            lambda: state.run_pod_sandbox(pod_config("q", log_directory=f"{tmp_path}/../x")),
            lambda: state.run_pod_sandbox(pod_config("q", log_directory="rel")),
            lambda: state.exec_sync("", ["true"]),
        ]
        for call in bad:
            with pytest.raises(CRIError):
                call()
        assert state.containers == {}  # a refused create leaves nothing behind
        assert state.check_invariants() == []
        # an int64 grace period must neither overflow a wait nor outlive its caller
        cid = state.create_container(pid, container_config("s", BUSYBOX, ["sleep", "infinity"]))
        state.start_container(cid)
        gone = threading.Event()
        threading.Timer(0.2, gone.set).start()
        t0 = time.monotonic()
        state.stop_container(cid, 2**63 - 1, abandoned=gone)
        assert time.monotonic() - t0 < 2
        assert state.containers[cid].item.state == pb.CONTAINER_RUNNING
        state.stop_container(cid, 0)
        assert state.containers[cid].item.state == pb.CONTAINER_EXITED
        assert state.check_invariants() == []
    finally:
        state.close()
