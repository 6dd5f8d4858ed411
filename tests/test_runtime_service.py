"""The fake runtime over a real gRPC channel on a real unix socket, as containerd behaves."""

from __future__ import annotations

import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crilab import FakeRuntime
from crilab.builders import container_config, pod_config
from crilab.runtime import processes
from crilab.runtime.errors import CRIError
from crilab.runtime.servicer import STREAM_CHUNK
from crilab.stubs import api_pb2 as pb
from crilab.stubs import api_pb2_grpc

BUSYBOX = "localhost/crilab/busybox:local"


class Stubs:
    def __init__(self, rt: FakeRuntime) -> None:
        target = rt.endpoint.replace("unix://", "unix:", 1)
        self.channel = grpc.insecure_channel(target)
        self.rs = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)

    def code_of(self, call, request) -> grpc.StatusCode:
        try:
            call(request, timeout=10)
        except grpc.RpcError as err:
            self.last_error = err
            return err.code()
        return grpc.StatusCode.OK

    def run_pod(self, name: str = "web", **kw) -> str:
        return self.rs.RunPodSandbox(
            pb.RunPodSandboxRequest(config=pod_config(name, **kw)), timeout=10
        ).pod_sandbox_id

    def create(
        self,
        pod_id: str,
        name: str = "app",
        command=("sleep", "infinity"),
        image: str = BUSYBOX,
        **kw,
    ) -> str:
        cfg = container_config(name, image, command, **kw)
        return self.rs.CreateContainer(
            pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg), timeout=10
        ).container_id

    def start(self, cid: str) -> None:
        self.rs.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=10)

    def status(self, cid: str) -> pb.ContainerStatus:
        return self.rs.ContainerStatus(
            pb.ContainerStatusRequest(container_id=cid), timeout=10
        ).status

    def pod_state(self, pid: str) -> int:
        return self.rs.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=pid), timeout=10
        ).status.state

    def wait_state(self, cid: str, state: int, within: float = 5.0) -> pb.ContainerStatus:
        deadline = time.monotonic() + within
        while True:
            status = self.status(cid)
            if status.state == state or time.monotonic() > deadline:
                return status
            time.sleep(0.01)


@pytest.fixture
def rt() -> Iterator[FakeRuntime]:
    with FakeRuntime(images=[BUSYBOX, "busybox"], seed="tests") as runtime:
        yield runtime


@pytest.fixture
def s(rt: FakeRuntime) -> Iterator[Stubs]:
    stubs = Stubs(rt)
    yield stubs
    stubs.channel.close()


NOT_FOUND = grpc.StatusCode.NOT_FOUND
OK = grpc.StatusCode.OK


# -- the server itself -------------------------------------------------------------


def test_private_socket_and_cleanup() -> None:
    rt = FakeRuntime()
    path = rt.endpoint.removeprefix("unix://")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert len(path.encode()) <= 107
    rt.stop()
    rt.stop()  # twice is fine
    assert not os.path.exists(path)


def test_xdg_runtime_dir_is_used_when_set(tmp_path, monkeypatch) -> None:
    xdg = tmp_path / "run"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    with FakeRuntime() as rt:
        assert rt.endpoint.startswith(f"unix://{xdg}/crilab/")


def test_tcp_listen_on_a_free_port() -> None:
    with FakeRuntime(listen="tcp://127.0.0.1:0") as rt:
        assert rt.endpoint.startswith("tcp://127.0.0.1:")
        assert not rt.endpoint.endswith(":0")
        channel = grpc.insecure_channel(rt.endpoint.removeprefix("tcp://"))
        reply = api_pb2_grpc.RuntimeServiceStub(channel).Version(pb.VersionRequest(), timeout=5)
        assert reply.runtime_api_version == "v1"
        channel.close()


def test_version_and_status(s: Stubs) -> None:
    v = s.rs.Version(pb.VersionRequest(version="v1"), timeout=5)
    assert (v.runtime_api_version, v.runtime_name) == ("v1", "crilab-fake")
    conditions = {
        c.type: c.status for c in s.rs.Status(pb.StatusRequest(), timeout=5).status.conditions
    }
    assert conditions == {"RuntimeReady": True, "NetworkReady": True}


# -- pod sandboxes -------------------------------------------------------------------


def test_pod_lifecycle_states(s: Stubs) -> None:
    pid = s.run_pod()
    assert len(pid) == 64 and int(pid, 16) >= 0
    assert s.pod_state(pid) == pb.SANDBOX_READY
    s.rs.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pid), timeout=5)
    assert s.pod_state(pid) == pb.SANDBOX_NOTREADY
    s.rs.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pid), timeout=5)  # twice: OK
    s.rs.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pid), timeout=5)
    assert (
        s.code_of(s.rs.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id=pid))
        == NOT_FOUND
    )


def test_duplicate_pod_metadata_names_the_holder(s: Stubs) -> None:
    pid = s.run_pod("dup", uid="u-1")
    code = s.code_of(
        s.rs.RunPodSandbox, pb.RunPodSandboxRequest(config=pod_config("dup", uid="u-1"))
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert pid in s.last_error.details()
    again = s.run_pod("dup", uid="u-1", attempt=1)
    assert again != pid


def test_stop_pod_kills_running_containers_and_keeps_created(s: Stubs) -> None:
    pid = s.run_pod()
    running = s.create(pid, "runs")
    created = s.create(pid, "waits")
    s.start(running)
    s.rs.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pid), timeout=5)
    killed = s.status(running)
    assert (killed.state, killed.exit_code, killed.reason) == (pb.CONTAINER_EXITED, 137, "Error")
    assert s.status(created).state == pb.CONTAINER_CREATED


def test_remove_pod_removes_its_containers_even_running(s: Stubs) -> None:
    pid = s.run_pod()
    cid = s.create(pid)
    s.start(cid)
    s.rs.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pid), timeout=5)
    assert s.code_of(s.rs.ContainerStatus, pb.ContainerStatusRequest(container_id=cid)) == NOT_FOUND
    assert not s.rs.ListContainers(pb.ListContainersRequest(), timeout=5).containers


# -- containers ------------------------------------------------------------------------


def test_create_container_errors(s: Stubs) -> None:
    pid = s.run_pod()
    req = pb.CreateContainerRequest(pod_sandbox_id="f" * 64, config=container_config("a", BUSYBOX))
    assert s.code_of(s.rs.CreateContainer, req) == NOT_FOUND
    req = pb.CreateContainerRequest(pod_sandbox_id=pid, config=container_config("a", "nginx"))
    assert s.code_of(s.rs.CreateContainer, req) == NOT_FOUND
    assert "pull it first" in s.last_error.details()
    s.create(pid, "a")
    req = pb.CreateContainerRequest(pod_sandbox_id=pid, config=container_config("a", BUSYBOX))
    assert s.code_of(s.rs.CreateContainer, req) == grpc.StatusCode.ALREADY_EXISTS
    s.rs.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pid), timeout=5)
    req = pb.CreateContainerRequest(pod_sandbox_id=pid, config=container_config("b", BUSYBOX))
    assert s.code_of(s.rs.CreateContainer, req) == NOT_FOUND
    assert "not ready" in s.last_error.details()


def test_start_stop_remove_container(s: Stubs) -> None:
    pid = s.run_pod()
    cid = s.create(pid)
    created = s.status(cid)
    assert (created.state, created.exit_code, created.reason) == (pb.CONTAINER_CREATED, 0, "")
    s.start(cid)
    assert s.status(cid).state == pb.CONTAINER_RUNNING
    assert (
        s.code_of(s.rs.StartContainer, pb.StartContainerRequest(container_id=cid))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "CONTAINER_RUNNING" in s.last_error.details()
    s.rs.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=5)
    stopped = s.status(cid)
    assert (stopped.state, stopped.exit_code, stopped.reason) == (pb.CONTAINER_EXITED, 137, "Error")
    assert (
        s.code_of(s.rs.StartContainer, pb.StartContainerRequest(container_id=cid))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "CONTAINER_EXITED" in s.last_error.details()
    # stopping an EXITED container is OK and changes nothing
    s.rs.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=5)
    assert s.status(cid).finished_at == stopped.finished_at
    s.rs.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=5)
    assert s.code_of(s.rs.RemoveContainer, pb.RemoveContainerRequest(container_id=cid)) == OK
    assert s.code_of(s.rs.ContainerStatus, pb.ContainerStatusRequest(container_id=cid)) == NOT_FOUND
    assert s.code_of(s.rs.StartContainer, pb.StartContainerRequest(container_id=cid)) == NOT_FOUND


def test_stop_waits_the_grace_period_for_a_shell_then_kills(s: Stubs) -> None:
    pid = s.run_pod()
    cid = s.create(pid, command=["sh", "-c", "sleep 3600"])
    s.start(cid)
    t0 = time.monotonic()
    s.rs.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=1), timeout=10)
    waited = time.monotonic() - t0
    assert waited >= 0.9, "a shell as PID 1 ignores SIGTERM: the runtime waits the grace period"
    assert (s.status(cid).exit_code, s.status(cid).reason) == (137, "Error")


def test_stopping_created_is_ok_and_changes_nothing(s: Stubs) -> None:
    cid = s.create(s.run_pod())
    s.rs.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=5)
    assert s.status(cid).state == pb.CONTAINER_CREATED


def test_exits_report_code_reason_and_times(s: Stubs) -> None:
    pid = s.run_pod()
    ok = s.create(pid, "ok", command=["echo", "done"])
    bad = s.create(pid, "bad", command=["sh", "-c", "exit 3"])
    for cid in (ok, bad):
        s.start(cid)
    done = s.wait_state(ok, pb.CONTAINER_EXITED)
    failed = s.wait_state(bad, pb.CONTAINER_EXITED)
    assert (done.exit_code, done.reason) == (0, "Completed")
    assert (failed.exit_code, failed.reason) == (3, "Error")
    assert done.created_at <= done.started_at <= done.finished_at


def test_a_container_log_is_in_cri_format(s: Stubs) -> None:
    cid = s.create(s.run_pod(), command=["sh", "-c", "echo out; echo err >&2"])
    s.start(cid)
    status = s.wait_state(cid, pb.CONTAINER_EXITED)
    lines = Path(status.log_path).read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["stdout F out", "stderr F err"]
    assert lines[0][:4].isdigit() and lines[0].split(" ")[0].endswith("Z")


def test_exec_sync(s: Stubs) -> None:
    cid = s.create(s.run_pod())
    req = pb.ExecSyncRequest(container_id=cid, cmd=["echo", "hi"], timeout=5)
    assert s.code_of(s.rs.ExecSync, req) == grpc.StatusCode.FAILED_PRECONDITION
    s.start(cid)
    out = s.rs.ExecSync(req, timeout=10)
    assert (out.stdout, out.stderr, out.exit_code) == (b"hi\n", b"", 0)
    out = s.rs.ExecSync(
        pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "echo err >&2; exit 3"]), timeout=10
    )
    assert (out.stdout, out.stderr, out.exit_code) == (b"", b"err\n", 3)
    req = pb.ExecSyncRequest(container_id=cid, cmd=["sleep", "5"], timeout=1)
    assert s.code_of(s.rs.ExecSync, req) == grpc.StatusCode.DEADLINE_EXCEEDED
    req = pb.ExecSyncRequest(container_id="0" * 64, cmd=["true"])
    assert s.code_of(s.rs.ExecSync, req) == NOT_FOUND


def test_ids_accept_unique_prefixes_and_refuse_ambiguous_ones(s: Stubs) -> None:
    pid = s.run_pod()
    ids = [s.create(pid, f"c{i}") for i in range(40)]
    cid = ids[0]
    assert s.status(cid[:13]).id == cid
    # with 40 IDs, some pair shares its first hex digit: that prefix is ambiguous
    firsts = [i[0] for i in ids]
    shared = next(c for c in firsts if firsts.count(c) > 1)
    code = s.code_of(s.rs.ContainerStatus, pb.ContainerStatusRequest(container_id=shared))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "ambiguous" in s.last_error.details()


def test_list_filters(s: Stubs) -> None:
    a = s.run_pod("a", labels={"app": "web", "tier": "front"})
    b = s.run_pod("b", labels={"app": "web"})
    c1 = s.create(a, "c1", labels={"role": "x"})
    c2 = s.create(b, "c2", labels={"role": "y"})
    s.start(c2)

    def ctrs(**kw) -> list[str]:
        flt = pb.ContainerFilter(**kw)
        return [
            c.id
            for c in s.rs.ListContainers(pb.ListContainersRequest(filter=flt), timeout=5).containers
        ]

    assert ctrs() == [c1, c2]
    assert ctrs(id=c1[:8]) == [c1]
    assert ctrs(pod_sandbox_id=b) == [c2]
    assert ctrs(state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING)) == [c2]
    assert ctrs(label_selector={"role": "x"}) == [c1]
    assert ctrs(label_selector={"role": "nope"}) == []

    def pods(**kw) -> list[str]:
        flt = pb.PodSandboxFilter(**kw)
        return [
            p.id for p in s.rs.ListPodSandbox(pb.ListPodSandboxRequest(filter=flt), timeout=5).items
        ]

    assert pods(label_selector={"app": "web"}) == [a, b]
    assert pods(label_selector={"app": "web", "tier": "front"}) == [a]
    s.rs.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=a), timeout=5)
    assert pods(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY)) == [b]


def test_a_repeated_list_follows_every_change(s: Stubs, rt: FakeRuntime) -> None:
    """Answers are reused while the state holds still (the kubelet relists every second),
    and never once it has moved: each step below lists again with the same filters."""
    running = pb.ContainerFilter(state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING))

    def seen() -> tuple[list[tuple[str, int]], list[str], list[tuple[str, int]]]:
        every = s.rs.ListContainers(pb.ListContainersRequest(), timeout=5).containers
        run = s.rs.ListContainers(pb.ListContainersRequest(filter=running), timeout=5)
        pods = s.rs.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=5).items
        return (
            [(c.id, c.state) for c in every],
            [c.id for c in run.containers],
            [(p.id, p.state) for p in pods],
        )

    assert seen() == seen() == ([], [], [])
    pid = s.run_pod()
    assert seen() == ([], [], [(pid, pb.SANDBOX_READY)])
    cid = s.create(pid)
    assert seen() == ([(cid, pb.CONTAINER_CREATED)], [], [(pid, pb.SANDBOX_READY)])
    s.start(cid)
    assert seen() == ([(cid, pb.CONTAINER_RUNNING)], [cid], [(pid, pb.SANDBOX_READY)])
    short = s.create(pid, "short", command=("true",))
    s.start(short)
    s.wait_state(short, pb.CONTAINER_EXITED)  # an exit nobody asked for moves the list too
    assert seen()[0] == [(cid, pb.CONTAINER_RUNNING), (short, pb.CONTAINER_EXITED)]
    s.rs.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pid), timeout=5)
    assert seen() == (
        [(cid, pb.CONTAINER_EXITED), (short, pb.CONTAINER_EXITED)],
        [],
        [(pid, pb.SANDBOX_NOTREADY)],
    )
    s.rs.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pid), timeout=5)
    assert seen() == ([], [], [])
    again = s.run_pod("again")
    rt.reset()
    assert seen() == ([], [], []), f"pod {again} outlived reset()"


def test_what_the_history_hands_out_is_a_copy(s: Stubs, rt: FakeRuntime) -> None:
    """A learner editing a recorded answer must not change the runtime's next answer."""
    pid = s.run_pod()
    s.create(pid)
    s.rs.ListContainers(pb.ListContainersRequest(), timeout=5)
    recorded = rt.calls_to("ListContainers")[-1].response
    del recorded.containers[:]
    assert len(rt.calls_to("ListContainers")[-1].response.containers) == 1
    again = s.rs.ListContainers(pb.ListContainersRequest(), timeout=5)
    assert len(again.containers) == 1


# -- images ------------------------------------------------------------------------------


def test_images(s: Stubs) -> None:
    ref = s.images.PullImage(
        pb.PullImageRequest(image=pb.ImageSpec(image="alpine")), timeout=5
    ).image_ref
    assert ref.startswith("sha256:") and len(ref) == 71
    st = s.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image="alpine")), timeout=5)
    assert "docker.io/library/alpine:latest" in st.image.repo_tags
    assert st.image.size > 1_000_000
    missing = s.images.ImageStatus(
        pb.ImageStatusRequest(image=pb.ImageSpec(image="nginx")), timeout=5
    )
    assert not missing.HasField("image")
    assert (
        s.code_of(
            s.images.PullImage, pb.PullImageRequest(image=pb.ImageSpec(image="example.invalid/x:1"))
        )
        == NOT_FOUND
    )
    assert (
        s.code_of(s.images.PullImage, pb.PullImageRequest(image=pb.ImageSpec(image="Bad Name")))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    s.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image="alpine")), timeout=5)
    assert (
        s.code_of(s.images.RemoveImage, pb.RemoveImageRequest(image=pb.ImageSpec(image="alpine")))
        == OK
    )
    fs = s.images.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=5)
    assert len(fs.image_filesystems) == 1 and fs.image_filesystems[0].used_bytes.value > 0


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("RunPodSandbox", pb.RunPodSandboxRequest(), "metadata"),
        ("CreateContainer", pb.CreateContainerRequest(), "pod_sandbox_id"),
        ("StartContainer", pb.StartContainerRequest(), "container_id"),
        ("ContainerStatus", pb.ContainerStatusRequest(), "container_id"),
        ("PodSandboxStatus", pb.PodSandboxStatusRequest(), "pod_sandbox_id"),
        ("ExecSync", pb.ExecSyncRequest(container_id="abc"), "cmd"),
    ],
)
def test_missing_fields_are_invalid_argument_naming_the_field(
    s: Stubs, method, request_, field
) -> None:
    assert s.code_of(getattr(s.rs, method), request_) == grpc.StatusCode.INVALID_ARGUMENT
    assert field in s.last_error.details()
    assert s.rs.Version(pb.VersionRequest(), timeout=5).runtime_api_version == "v1"


def test_failed_calls_change_nothing(s: Stubs, rt: FakeRuntime) -> None:
    pid = s.run_pod()
    s.create(pid, "a")
    before = (len(rt.state.pods), len(rt.state.containers))
    for _ in range(3):
        s.code_of(
            s.rs.CreateContainer,
            pb.CreateContainerRequest(pod_sandbox_id=pid, config=container_config("a", BUSYBOX)),
        )
        s.code_of(
            s.rs.CreateContainer,
            pb.CreateContainerRequest(pod_sandbox_id=pid, config=container_config("b", "nope:1")),
        )
    assert (len(rt.state.pods), len(rt.state.containers)) == before
    assert rt.state.check_invariants() == []


def test_large_lists_stream_in_chunks(s: Stubs, rt: FakeRuntime) -> None:
    pid = s.run_pod()
    for i in range(STREAM_CHUNK + 5):
        rt.state.create_container(pid, container_config(f"c{i}", BUSYBOX))
    chunks = list(s.rs.StreamContainers(pb.StreamContainersRequest(), timeout=30))
    assert [len(c.containers) for c in chunks] == [STREAM_CHUNK, 5]
    listed = s.rs.ListContainers(pb.ListContainersRequest(), timeout=30).containers
    assert [c.id for ch in chunks for c in ch.containers] == [c.id for c in listed]


# -- found by the audit: each over the real socket ----------------------------------------------

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("ref", ["Bad Ref", "example.invalid/x"])
def test_a_failed_preload_leaves_nothing_behind(ref: str, tmp_path: Path, monkeypatch) -> None:
    """Each failed FakeRuntime(images=[...]) leaked a timer thread and a temp directory."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    threads = {t.ident for t in threading.enumerate()}
    for _ in range(3):
        with pytest.raises(CRIError, match=r"Bad Ref|invalid"):
            FakeRuntime(images=[ref])
    assert not [t.name for t in threading.enumerate() if t.ident not in threads]
    assert list(tmp_path.iterdir()) == []


def test_a_century_long_sleep_freezes_no_other_container(s: Stubs) -> None:
    """`sleep 9999999999` overflowed the one timer thread's wait and killed it: every
    container after it froze in its first step."""
    pid = s.run_pod()
    s.start(s.create(pid, "sleeper", ["sleep", "9999999999"]))
    time.sleep(0.3)  # the timer thread is now waiting for the sleeper's wake-up
    quick = s.create(pid, "quick", ["sh", "-c", "sleep 0.05; echo done"])
    s.start(quick)
    done = s.wait_state(quick, pb.CONTAINER_EXITED)
    assert (done.state, done.exit_code) == (pb.CONTAINER_EXITED, 0)


def test_exec_with_an_int64_timeout_ends_with_its_caller(s: Stubs, rt: FakeRuntime) -> None:
    cid = s.create(s.run_pod())
    s.start(cid)
    for timeout in (10**10, 2**63 - 1):
        req = pb.ExecSyncRequest(container_id=cid, cmd=["sleep", "infinity"], timeout=timeout)
        try:
            s.rs.ExecSync(req, timeout=1)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.details()  # not INTERNAL
        else:
            raise AssertionError("ExecSync of sleep infinity returned")
        out = s.rs.ExecSync(
            pb.ExecSyncRequest(container_id=cid, cmd=["echo", "ok"], timeout=timeout), timeout=5
        )
        assert (out.stdout, out.exit_code) == (b"ok\n", 0)


def test_an_exec_ends_when_its_pod_is_removed(s: Stubs) -> None:
    pid = s.run_pod()
    cid = s.create(pid)
    s.start(cid)
    req = pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "sleep 4; echo after"], timeout=30)
    future = s.rs.ExecSync.future(req, timeout=30)
    time.sleep(0.3)
    s.rs.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pid), timeout=10)
    reply = future.result(timeout=3)  # well before the 4 s the command would sleep
    assert (reply.stdout, reply.exit_code) == (b"", 137)  # killed with its container


def _log_dir_replaced_by_a_file(log_path: Path) -> None:
    log_path.unlink()
    log_path.parent.rmdir()
    log_path.parent.write_text("in the way")


def test_start_with_a_log_that_cannot_be_opened_changes_nothing(s: Stubs, tmp_path: Path) -> None:
    pid = s.run_pod(log_directory=str(tmp_path / "logs"))
    cid = s.create(pid, command=["sh", "-c", "echo hello; sleep 3600"])
    log_path = Path(s.status(cid).log_path)
    _log_dir_replaced_by_a_file(log_path)
    assert s.code_of(s.rs.StartContainer, pb.StartContainerRequest(container_id=cid)) == (
        FAILED_PRECONDITION
    )
    assert str(log_path) in s.last_error.details()
    assert "writable directory" in s.last_error.details()
    assert s.status(cid).state == pb.CONTAINER_CREATED  # not RUNNING with no process
    log_path.parent.unlink()  # fixed
    s.start(cid)
    assert s.status(cid).state == pb.CONTAINER_RUNNING
    deadline = time.monotonic() + 5
    while b"hello" not in log_path.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert b"hello" in log_path.read_bytes()


def test_reopen_of_an_unopenable_log_is_failed_precondition(s: Stubs, tmp_path: Path) -> None:
    pid = s.run_pod(log_directory=str(tmp_path / "logs"))
    cid = s.create(pid)
    s.start(cid)
    log_path = Path(s.status(cid).log_path)
    log_path.rename(tmp_path / "moved.log")
    log_path.mkdir()  # the path is now a directory
    code = s.code_of(s.rs.ReopenContainerLog, pb.ReopenContainerLogRequest(container_id=cid))
    assert code == FAILED_PRECONDITION, s.last_error.details()  # was INTERNAL
    assert str(log_path) in s.last_error.details()
    assert s.status(cid).state == pb.CONTAINER_RUNNING


def test_a_failing_log_rotation_does_not_freeze_the_container(s: Stubs, tmp_path: Path) -> None:
    pid = s.run_pod(log_directory=str(tmp_path / "logs"))
    # 256 KiB lines every 10 ms: past the 10 MiB rotation size within a second or so
    script = "L=x; for i in " + " ".join(["1"] * 18) + "; do L=$L$L; done; "
    script += "while true; do echo $L; sleep 0.01; done"
    cid = s.create(pid, command=["sh", "-c", script])
    log_path = Path(s.status(cid).log_path)
    Path(f"{log_path}.1").mkdir()  # the rotated name is taken: rotation must fail
    s.start(cid)
    limit = processes.DEFAULT_LOG_MAX_BYTES
    deadline = time.monotonic() + 30
    while log_path.stat().st_size < limit + (1 << 20) and time.monotonic() < deadline:
        time.sleep(0.05)
    size = log_path.stat().st_size
    assert size > limit, "the log never reached the rotation size"
    while log_path.stat().st_size == size and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log_path.stat().st_size > size, "the container froze at the failed rotation"
    assert s.status(cid).state == pb.CONTAINER_RUNNING
    s.rs.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=10)
    assert s.status(cid).exit_code == 137


def test_a_malformed_image_reference_gets_fitting_advice(s: Stubs) -> None:
    pid = s.run_pod()
    req = pb.CreateContainerRequest(pod_sandbox_id=pid, config=container_config("a", "Bad Ref"))
    assert s.code_of(s.rs.CreateContainer, req) == NOT_FOUND  # containerd: NOT_FOUND too
    details = s.last_error.details()
    assert "whitespace" in details and "crictl pull" not in details


def test_runtime_handlers_are_the_configured_ones(s: Stubs) -> None:
    status = s.rs.Status(pb.StatusRequest(), timeout=5)
    assert [h.name for h in status.runtime_handlers] == ["", "runc"]
    s.rs.RunPodSandbox(
        pb.RunPodSandboxRequest(config=pod_config("runc-pod"), runtime_handler="runc"), timeout=5
    )
    req = pb.RunPodSandboxRequest(config=pod_config("kata"), runtime_handler="kata-nonexistent")
    assert s.code_of(s.rs.RunPodSandbox, req) == NOT_FOUND
    assert "kata-nonexistent" in s.last_error.details() and '"runc"' in s.last_error.details()
    listed = s.rs.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=5).items
    assert [p.metadata.name for p in listed] == ["runc-pod"]
    assert listed[0].runtime_handler == "runc"


def test_starting_a_program_that_does_not_exist_is_a_start_error(s: Stubs) -> None:
    pid = s.run_pod()
    cid = s.create(pid, "ghost", ["nosuchbinary"])
    assert s.code_of(s.rs.StartContainer, pb.StartContainerRequest(container_id=cid)) == (
        FAILED_PRECONDITION
    )
    assert 'exec: "nosuchbinary": executable file not found in $PATH' in s.last_error.details()
    status = s.status(cid)
    assert (status.state, status.exit_code, status.reason) == (
        pb.CONTAINER_EXITED,
        128,
        "StartError",
    )
    assert "executable file not found" in status.message
    # run by a shell, the shell itself starts and reports it, as sh would
    shell = s.create(pid, "shell", ["sh", "-c", "nosuchbinary"])
    s.start(shell)
    status = s.wait_state(shell, pb.CONTAINER_EXITED)
    assert (status.exit_code, status.reason) == (127, "Error")
    assert b"sh: nosuchbinary: not found" in Path(status.log_path).read_bytes()


def test_logs_in_the_runtimes_own_directory_go_with_their_container(
    s: Stubs, rt: FakeRuntime, tmp_path: Path
) -> None:
    config = pod_config("own")
    config.log_directory = ""  # the runtime chooses where the logs go
    own_pod = s.rs.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=5).pod_sandbox_id
    named_pod = s.run_pod("named", log_directory=str(tmp_path / "logs"))
    logs = rt.state.root / "logs"
    for i in range(30):  # 30 lifecycles left 33.6 MB behind
        cid = s.create(own_pod, f"c{i}", ["sh", "-c", "echo " + "x" * 1000])
        s.start(cid)
        s.wait_state(cid, pb.CONTAINER_EXITED)
        s.rs.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=5)
    assert not any(p.is_file() for p in logs.rglob("*")), "a removed container's log stayed"
    named = s.create(named_pod, "kept", ["echo", "hi"])
    kept = Path(s.status(named).log_path)
    s.rs.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=named_pod), timeout=5)
    assert kept.exists()  # a directory the client named: never deleted (as containerd)


def test_a_huge_script_is_refused_saying_the_limit(s: Stubs) -> None:
    """A 15 MB `sh -c` script with timeout=1 kept a worker busy for 35 s."""
    cid = s.create(s.run_pod())
    s.start(cid)
    script = "echo a;" * (2 << 20)  # 14 MiB
    req = pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", script], timeout=1)
    t0 = time.monotonic()
    assert s.code_of(s.rs.ExecSync, req) == grpc.StatusCode.INVALID_ARGUMENT
    assert time.monotonic() - t0 < 10  # refused, not parsed (generous: only "no hang")
    assert "1048576 bytes" in s.last_error.details()
    pod = s.rs.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=5).items[0].id
    create = pb.CreateContainerRequest(
        pod_sandbox_id=pod, config=container_config("huge", BUSYBOX, ["sh", "-c", script])
    )
    assert s.code_of(s.rs.CreateContainer, create) == grpc.StatusCode.INVALID_ARGUMENT
    assert "1048576 bytes" in s.last_error.details()
    # under the limit, a long script with a short timeout still ends near its timeout
    req.cmd[2] = "echo a;" * 140_000
    t0 = time.monotonic()
    assert s.code_of(s.rs.ExecSync, req) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 10
