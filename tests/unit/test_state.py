"""The runtime state machine called directly: no gRPC, no socket, plain values and protos.

Every scenario ends with ``state.check_invariants() == []``: the maps, the
prefix indexes, the state and label indexes and the name reservations agree.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crilab.builders import container_config, pod_config
from crilab.runtime.errors import (
    AlreadyExists,
    CRIError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from crilab.runtime.events import MAX_EVENT_BYTES
from crilab.runtime.scheduler import Scheduler
from crilab.runtime.state import EVENT_TRIMMED_NOTE, RuntimeState
from crilab.stubs import api_pb2 as pb

BUSYBOX = "localhost/crilab/busybox:local"


class Kit:
    """The state under test plus the few helpers every scenario needs."""

    def __init__(self, state: RuntimeState, logs: Path) -> None:
        self.state = state
        self.logs = logs

    def pod(self, name: str = "web", **kw) -> str:
        kw.setdefault("log_directory", str(self.logs))
        return self.state.run_pod_sandbox(pod_config(name, **kw))

    def ctr(self, pod_id: str, name: str = "app", command=("sleep", "infinity"), **kw) -> str:
        image = kw.pop("image", BUSYBOX)
        return self.state.create_container(pod_id, container_config(name, image, command, **kw))

    def status(self, cid: str) -> pb.ContainerStatus:
        return self.state.container_status(cid).status

    def pod_state(self, pid: str) -> int:
        return self.state.pod_sandbox_status(pid).status.state

    def wait_state(self, cid: str, state: int, within: float = 5.0) -> pb.ContainerStatus:
        deadline = time.monotonic() + within
        while True:
            status = self.status(cid)
            if status.state == state or time.monotonic() > deadline:
                return status
            time.sleep(0.01)

    def ids(self, **kw) -> list[str]:
        return [c.id for c in self.state.list_containers(pb.ContainerFilter(**kw))]


@pytest.fixture
def k(tmp_path: Path) -> Iterator[Kit]:
    state = RuntimeState(images=[BUSYBOX], seed="t", root=tmp_path / "root")
    kit = Kit(state, tmp_path / "logs")
    yield kit
    problems = state.check_invariants()
    state.close()
    assert problems == []


# -- pod sandboxes ---------------------------------------------------------------------------


def test_pod_ready_notready_removed(k: Kit) -> None:
    pid = k.pod()
    assert k.pod_state(pid) == pb.SANDBOX_READY
    k.state.stop_pod_sandbox(pid)
    assert k.pod_state(pid) == pb.SANDBOX_NOTREADY
    k.state.stop_pod_sandbox(pid)  # twice: OK
    assert k.pod_state(pid) == pb.SANDBOX_NOTREADY
    assert k.state.check_invariants() == []
    k.state.remove_pod_sandbox(pid)
    with pytest.raises(NotFound):
        k.state.pod_sandbox_status(pid)
    k.state.remove_pod_sandbox(pid)  # removing what is gone is OK
    assert k.state.list_pod_sandbox() == []


def test_duplicate_pod_metadata_names_the_holder(k: Kit) -> None:
    pid = k.pod("dup", uid="u-1")
    with pytest.raises(AlreadyExists) as err:
        k.pod("dup", uid="u-1")
    assert pid in err.value.message
    again = k.pod("dup", uid="u-1", attempt=1)
    assert again != pid
    assert k.state.check_invariants() == []
    # removing the holder frees the name
    k.state.remove_pod_sandbox(pid)
    assert k.pod("dup", uid="u-1") not in (pid, again)


def test_stop_pod_kills_running_and_keeps_created(k: Kit) -> None:
    pid = k.pod()
    running, created = k.ctr(pid, "runs"), k.ctr(pid, "waits")
    k.state.start_container(running)
    k.state.stop_pod_sandbox(pid)
    killed = k.status(running)
    assert (killed.state, killed.exit_code, killed.reason) == (pb.CONTAINER_EXITED, 137, "Error")
    assert k.status(created).state == pb.CONTAINER_CREATED
    with pytest.raises(FailedPrecondition, match="not ready"):
        k.state.start_container(created)
    assert k.state.check_invariants() == []


def test_remove_pod_removes_its_containers_even_running(k: Kit) -> None:
    pid = k.pod()
    other = k.pod("other")
    cid, keep = k.ctr(pid), k.ctr(other)
    k.state.start_container(cid)
    k.state.remove_pod_sandbox(pid)
    with pytest.raises(NotFound):
        k.state.container_status(cid)
    assert k.ids() == [keep]
    assert k.state.check_invariants() == []


# -- containers ------------------------------------------------------------------------------


def test_create_errors(k: Kit) -> None:
    pid = k.pod()
    with pytest.raises(NotFound):
        k.ctr("f" * 64)
    with pytest.raises(NotFound, match="pull it first"):
        k.ctr(pid, image="docker.io/library/nginx:1.27")
    k.ctr(pid, "a")
    with pytest.raises(AlreadyExists) as err:
        k.ctr(pid, "a")
    assert k.ids()[0] in err.value.message
    k.ctr(pid, "a", attempt=1)  # a new attempt is a new name
    stopped = k.pod("stopped")
    k.state.stop_pod_sandbox(stopped)
    with pytest.raises(NotFound, match="not ready"):
        k.ctr(stopped, "b")
    assert len(k.ids()) == 2
    assert k.state.check_invariants() == []


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (pb.ContainerConfig(image=pb.ImageSpec(image=BUSYBOX)), "metadata"),
        (
            pb.ContainerConfig(metadata=pb.ContainerMetadata(), image=pb.ImageSpec(image=BUSYBOX)),
            "metadata.name",
        ),
        (pb.ContainerConfig(metadata=pb.ContainerMetadata(name="x")), "image.image"),
    ],
)
def test_create_invalid_argument_names_the_field(k: Kit, config, field) -> None:
    pid = k.pod()
    with pytest.raises(InvalidArgument, match=field.replace(".", r"\.")):
        k.state.create_container(pid, config)
    with pytest.raises(InvalidArgument, match="pod_sandbox_id"):
        k.state.create_container("", container_config("x", BUSYBOX))
    assert k.state.containers == {}


def test_run_pod_invalid_argument_names_the_field(k: Kit) -> None:
    with pytest.raises(InvalidArgument, match="metadata"):
        k.state.run_pod_sandbox(pb.PodSandboxConfig())
    with pytest.raises(InvalidArgument, match=r"metadata\.name"):
        k.state.run_pod_sandbox(pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(uid="u")))
    assert k.state.pods == {}


def test_start_twice_names_the_state(k: Kit) -> None:
    cid = k.ctr(k.pod())
    k.state.start_container(cid)
    assert k.status(cid).state == pb.CONTAINER_RUNNING
    with pytest.raises(FailedPrecondition, match="CONTAINER_RUNNING"):
        k.state.start_container(cid)
    k.state.stop_container(cid)
    with pytest.raises(FailedPrecondition, match="CONTAINER_EXITED"):
        k.state.start_container(cid)


def test_stop_created_and_exited_changes_nothing(k: Kit) -> None:
    pid = k.pod()
    created = k.ctr(pid, "c")
    k.state.stop_container(created)
    assert k.status(created).state == pb.CONTAINER_CREATED
    cid = k.ctr(pid, "e")
    k.state.start_container(cid)
    k.state.stop_container(cid, timeout=0)
    stopped = k.status(cid)
    assert (stopped.state, stopped.exit_code, stopped.reason) == (pb.CONTAINER_EXITED, 137, "Error")
    k.state.stop_container(cid, timeout=5)
    assert k.status(cid) == stopped
    assert k.state.check_invariants() == []


def test_stop_waits_the_grace_period_for_a_shell_then_kills(k: Kit) -> None:
    cid = k.ctr(k.pod(), command=["sh", "-c", "sleep 3600"])
    k.state.start_container(cid)
    t0 = time.monotonic()
    k.state.stop_container(cid, timeout=1)
    assert time.monotonic() - t0 >= 0.9, "a shell as PID 1 ignores SIGTERM: wait the grace period"
    status = k.status(cid)
    assert (status.state, status.exit_code, status.reason) == (pb.CONTAINER_EXITED, 137, "Error")


@pytest.mark.parametrize(
    ("image", "command"),
    [
        ("docker.io/library/nginx:1.27", ()),  # its entrypoint script execs nginx
        (BUSYBOX, ("nginx", "-g", "daemon off;")),
        (BUSYBOX, ("sh", "-c", "nginx")),  # a sole command: the shell execs it
    ],
)
def test_a_server_handles_sigterm_at_once(k: Kit, image: str, command) -> None:
    k.state.pull_image(image)
    cid = k.ctr(k.pod(), command=command, image=image)
    k.state.start_container(cid)  # and stop at once, before its process took a step
    t0 = time.monotonic()
    k.state.stop_container(cid, timeout=10)
    assert time.monotonic() - t0 < 5, "a server exits on SIGTERM: no grace period to wait out"
    status = k.status(cid)
    assert (status.state, status.exit_code, status.reason) == (pb.CONTAINER_EXITED, 0, "Completed")


def test_exits_report_code_and_reason(k: Kit) -> None:
    pid = k.pod()
    ok = k.ctr(pid, "ok", command=["echo", "done"])
    bad = k.ctr(pid, "bad", command=["sh", "-c", "exit 3"])
    nap = k.ctr(pid, "nap", command=["sleep", "0.05"])
    for cid in (ok, bad, nap):
        k.state.start_container(cid)
    done, failed, slept = (k.wait_state(c, pb.CONTAINER_EXITED) for c in (ok, bad, nap))
    assert (done.state, done.exit_code, done.reason) == (pb.CONTAINER_EXITED, 0, "Completed")
    assert (failed.state, failed.exit_code, failed.reason) == (pb.CONTAINER_EXITED, 3, "Error")
    assert (slept.state, slept.exit_code) == (pb.CONTAINER_EXITED, 0)
    assert done.created_at <= done.started_at <= done.finished_at
    assert slept.finished_at - slept.started_at >= 40_000_000  # it slept ~50 ms
    assert k.state.check_invariants() == []


# -- IDs and filters -------------------------------------------------------------------------


def test_id_prefixes_unique_and_ambiguous(k: Kit) -> None:
    pid = k.pod()
    ids = [k.ctr(pid, f"c{i}") for i in range(40)]
    assert len(set(ids)) == 40 and all(len(i) == 64 for i in ids)
    assert k.status(ids[0][:13]).id == ids[0]
    assert k.state.pod_sandbox_status(pid[:13]).status.id == pid
    firsts = [i[0] for i in ids]
    shared = next(c for c in firsts if firsts.count(c) > 1)  # 40 IDs, 16 digits: some repeat
    with pytest.raises(InvalidArgument, match="ambiguous"):
        k.state.container_status(shared)
    with pytest.raises(NotFound):
        k.state.container_status("z")  # no hex ID starts with z
    with pytest.raises(InvalidArgument, match="container_id"):
        k.state.container_status("")


def test_seeded_ids_are_deterministic(tmp_path: Path) -> None:
    made = []
    for n in range(2):
        state = RuntimeState(images=[BUSYBOX], seed="same", root=tmp_path / str(n))
        try:
            pid = state.run_pod_sandbox(pod_config("p", uid="u", log_directory=str(tmp_path)))
            made.append((pid, state.create_container(pid, container_config(f"c{n}", BUSYBOX))))
        finally:
            state.close()
    assert made[0] == made[1]


def test_filters(k: Kit) -> None:
    a = k.pod("a", labels={"app": "web", "tier": "front"})
    b = k.pod("b", labels={"app": "web"})
    c1 = k.ctr(a, "c1", labels={"role": "x", "env": "prod"})
    c2 = k.ctr(b, "c2", labels={"role": "y", "env": "prod"})
    c3 = k.ctr(b, "c3", labels={"role": "x"})
    k.state.start_container(c2)
    running = pb.ContainerStateValue(state=pb.CONTAINER_RUNNING)
    assert k.ids() == [c1, c2, c3]
    assert [c.id for c in k.state.list_containers()] == [c1, c2, c3]
    assert k.ids(id=c1[:8]) == [c1]
    assert k.ids(id=c1) == [c1]
    assert k.ids(pod_sandbox_id=b) == [c2, c3]
    assert k.ids(pod_sandbox_id=b[:10]) == [c2, c3]
    assert k.ids(state=running) == [c2]
    assert k.ids(label_selector={"role": "x"}) == [c1, c3]
    assert k.ids(label_selector={"role": "x", "env": "prod"}) == [c1]  # all must match
    assert k.ids(label_selector={"role": "x"}, state=running) == []
    assert k.ids(pod_sandbox_id=b, state=running) == [c2]
    assert k.ids(pod_sandbox_id=a, label_selector={"role": "y"}) == []
    assert k.ids(id=c1[:8], pod_sandbox_id=b) == []
    assert k.ids(label_selector={"role": "nope"}) == []
    assert k.ids(id="0" * 64) == []
    assert k.ids(pod_sandbox_id="0" * 64) == []

    def pods(**kw) -> list[str]:
        return [p.id for p in k.state.list_pod_sandbox(pb.PodSandboxFilter(**kw))]

    assert pods() == [a, b]
    assert pods(id=a[:8]) == [a]
    assert pods(label_selector={"app": "web"}) == [a, b]
    assert pods(label_selector={"app": "web", "tier": "front"}) == [a]
    assert pods(label_selector={"app": "db"}) == []
    k.state.stop_pod_sandbox(a)
    assert pods(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY)) == [b]
    assert pods(state=pb.PodSandboxStateValue(state=pb.SANDBOX_NOTREADY)) == [a]
    k.state.remove_container(c1)
    assert k.ids(label_selector={"env": "prod"}) == [c2]
    assert k.state.check_invariants() == []


def test_scale_label_and_state_filter(k: Kit) -> None:
    """5,000 containers across 50 pods: the index-driven filter returns exactly the right ones."""
    fds = Path("/proc/self/fd")
    open_before = len(list(fds.iterdir())) if fds.is_dir() else 0
    pods = [k.pod(f"p{i}", uid=f"u{i}") for i in range(50)]
    expected_ids: list[str] = []
    expected_by_label: list[str] = []
    for n in range(5000):
        pod = pods[n % 50]
        tier = ("front", "back", "db")[n % 3]
        cfg = container_config(f"c{n}", BUSYBOX, ["sleep", "infinity"], labels={"tier": tier})
        cid = k.state.create_container(pod, cfg)
        if tier == "back":
            expected_by_label.append(cid)
            if n % 7 == 0:
                k.state.start_container(cid)
                expected_ids.append(cid)
    assert len(k.state.containers) == 5000
    if fds.is_dir():  # only a running container holds its log open (the soft limit is often 1024)
        assert len(list(fds.iterdir())) - open_before <= len(expected_ids) + 50
    running = pb.ContainerStateValue(state=pb.CONTAINER_RUNNING)
    got = k.ids(label_selector={"tier": "back"}, state=running)
    assert got == expected_ids and len(got) > 100
    assert k.ids(label_selector={"tier": "back"}) == expected_by_label
    assert len(k.ids(state=running)) == len(expected_ids)
    assert len(k.ids(pod_sandbox_id=pods[7])) == 100
    assert k.state.check_invariants() == []
    k.state.stop_pod_sandbox(pods[1])  # kills its running "back" containers
    killed = {c for c in expected_ids if k.state.containers[c].pod_id == pods[1]}
    assert killed
    got = k.ids(label_selector={"tier": "back"}, state=running)
    assert got == [c for c in expected_ids if c not in killed]
    assert k.state.check_invariants() == []


# -- images ----------------------------------------------------------------------------------


def test_generations_move_exactly_when_a_list_answer_can(k: Kit) -> None:
    """The servicer reuses a List answer while its generation holds: every change a List
    can show must move it, and reading (status, exec, stats) must not."""
    st = k.state
    last = [(st.pods_generation, st.containers_generation)]

    def moved() -> tuple[bool, bool]:
        """Whether (pods, containers) moved since the last look."""
        now = (st.pods_generation, st.containers_generation)
        before, last[0] = last[0], now
        return now[0] != before[0], now[1] != before[1]

    pid = k.pod()
    assert moved() == (True, False)
    cid = k.ctr(pid)
    assert moved() == (False, True)
    st.start_container(cid)
    assert moved() == (False, True)
    st.container_status(cid)
    st.exec_sync(cid, ["echo", "hi"], 5)
    st.list_containers()
    st.pod_sandbox_status(pid)
    assert moved() == (False, False)
    st.stop_container(cid, 0)
    assert moved() == (False, True)
    st.stop_pod_sandbox(pid)
    assert moved() == (True, False)
    st.remove_pod_sandbox(pid)
    assert moved() == (True, True)
    st.reset()
    assert moved() == (True, True)
    assert st.check_invariants() == []


def test_pull_normalizes_and_merges_tags(k: Kit) -> None:
    ref = k.state.pull_image("busybox")
    assert ref.startswith("sha256:") and len(ref) == 71
    image = k.state.image_status("busybox").image
    assert image.id == ref
    assert "docker.io/library/busybox:latest" in image.repo_tags
    assert k.state.image_status("docker.io/library/busybox:latest").image.id == ref
    assert k.state.image_status(ref).image.id == ref
    assert k.state.image_status(ref.removeprefix("sha256:")[:12]).image.id == ref
    # busybox:1.36 is the same image (same ID): one image, both tags
    assert k.state.pull_image("busybox:1.36") == ref
    tags = k.state.image_status("busybox:1.36").image.repo_tags
    assert {"docker.io/library/busybox:latest", "docker.io/library/busybox:1.36"} <= set(tags)
    assert [i.id for i in k.state.list_images("busybox")] == [ref]
    assert len(k.state.list_images()) == 2  # the preloaded local busybox and this one


def test_image_errors_and_removal(k: Kit) -> None:
    with pytest.raises(NotFound, match="invalid"):
        k.state.pull_image("example.invalid/x:1")
    with pytest.raises(InvalidArgument):
        k.state.pull_image("Bad Name")
    with pytest.raises(InvalidArgument, match="image"):
        k.state.pull_image("")
    assert not k.state.image_status("alpine").HasField("image")
    k.state.pull_image("alpine")
    assert k.state.image_status("alpine").HasField("image")
    k.state.remove_image("alpine")
    assert not k.state.image_status("alpine").HasField("image")
    assert not k.state.image_status("alpine:3.20").HasField("image")  # every tag went
    k.state.remove_image("alpine")  # missing: OK
    k.state.remove_image("never-pulled:1")
    assert [i.repo_tags[0] for i in k.state.list_images()] == [BUSYBOX]


# -- ExecSync --------------------------------------------------------------------------------


def test_exec_sync(k: Kit) -> None:
    cid = k.ctr(k.pod())
    with pytest.raises(FailedPrecondition, match="CONTAINER_CREATED"):
        k.state.exec_sync(cid, ["echo", "hi"])
    k.state.start_container(cid)
    out = k.state.exec_sync(cid, ["echo", "hi"], timeout=5)
    assert (out.stdout, out.stderr, out.exit_code) == (b"hi\n", b"", 0)
    out = k.state.exec_sync(cid, ["sh", "-c", "echo err >&2; exit 3"], timeout=5)
    assert (out.stdout, out.stderr, out.exit_code) == (b"", b"err\n", 3)
    with pytest.raises(InvalidArgument, match="cmd"):
        k.state.exec_sync(cid, [])
    with pytest.raises(NotFound):
        k.state.exec_sync("0" * 64, ["true"])
    k.state.stop_container(cid)
    with pytest.raises(FailedPrecondition, match="CONTAINER_EXITED"):
        k.state.exec_sync(cid, ["true"])


def test_exec_sync_timeout_is_deadline_exceeded(tmp_path: Path) -> None:
    slept: list[float] = []
    state = RuntimeState(images=[BUSYBOX], seed="t", root=tmp_path / "root", sleep=slept.append)
    try:
        pid = state.run_pod_sandbox(pod_config("p", log_directory=str(tmp_path / "logs")))
        cid = state.create_container(pid, container_config("c", BUSYBOX, ["sleep", "infinity"]))
        state.start_container(cid)
        with pytest.raises(DeadlineExceeded, match="timed out"):
            state.exec_sync(cid, ["sleep", "5"], timeout=1)
        assert sum(slept) == pytest.approx(1.0)  # waited the timeout, not the 5 s
        assert state.exec_sync(cid, ["sleep", "0.5"], timeout=1).exit_code == 0
    finally:
        state.close()


def test_exec_sync_timeout_really_waits(k: Kit) -> None:
    cid = k.ctr(k.pod())
    k.state.start_container(cid)
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        k.state.exec_sync(cid, ["sleep", "30"], timeout=1)
    assert time.monotonic() - t0 >= 0.9


# -- reset -----------------------------------------------------------------------------------


def test_reset_forgets_everything_but_preloaded_images(k: Kit) -> None:
    pid = k.pod()
    cid = k.ctr(pid)
    k.state.start_container(cid)
    k.state.pull_image("alpine")
    k.state.reset()
    assert (k.state.pods, k.state.containers) == ({}, {})
    assert k.state.list_pod_sandbox() == [] and k.state.list_containers() == []
    assert [i.repo_tags[0] for i in k.state.list_images()] == [BUSYBOX]
    with pytest.raises(NotFound):
        k.state.container_status(cid)
    with pytest.raises(NotFound):
        k.state.pod_sandbox_status(pid)
    assert k.state.check_invariants() == []
    # the names are free again and the runtime still works
    again = k.pod()
    k.state.start_container(k.ctr(again))
    assert k.state.check_invariants() == []


# -- events ----------------------------------------------------------------------------------


def test_events_for_a_lifecycle(k: Kit) -> None:
    pid = k.pod()
    with k.state.events.subscribe() as sub:
        assert k.state.events.subscribers == 1
        cid = k.ctr(pid)
        k.state.start_container(cid)
        k.state.stop_container(cid)
        k.state.remove_container(cid)
        events = [sub.get(timeout=2) for _ in range(4)]
        assert sub.get(timeout=0.05) is None
    assert k.state.events.subscribers == 0
    assert None not in events
    assert [e.container_event_type for e in events] == [
        pb.CONTAINER_CREATED_EVENT,
        pb.CONTAINER_STARTED_EVENT,
        pb.CONTAINER_STOPPED_EVENT,
        pb.CONTAINER_DELETED_EVENT,
    ]
    for e in events:
        assert e.container_id == cid
        assert e.pod_sandbox_status.id == pid
        assert e.pod_sandbox_status.state == pb.SANDBOX_READY
        assert e.created_at > 0
    assert [e.created_at for e in events] == sorted(e.created_at for e in events)
    states = [[s.state for s in e.containers_statuses if s.id == cid] for e in events]
    assert states == [
        [pb.CONTAINER_CREATED],
        [pb.CONTAINER_RUNNING],
        [pb.CONTAINER_EXITED],
        [pb.CONTAINER_EXITED],
    ]


def test_events_when_a_pod_goes(k: Kit) -> None:
    pid = k.pod()
    cid = k.ctr(pid)
    k.state.start_container(cid)
    with k.state.events.subscribe() as sub:
        k.state.remove_pod_sandbox(pid)
        kinds = [sub.get(timeout=2).container_event_type for _ in range(2)]
    assert kinds == [pb.CONTAINER_STOPPED_EVENT, pb.CONTAINER_DELETED_EVENT]


# -- invariants see every index ----------------------------------------------------------


def test_check_invariants_sees_every_corrupted_index(k: Kit) -> None:
    """Corrupt each index in turn: each corruption is a finding, and undoing it clears it."""
    st = k.state
    pid = k.pod(labels={"app": "web"})
    cid = k.ctr(pid, labels={"tier": "front"})
    st.start_container(cid)
    assert st.check_invariants() == []

    def corrupt(undo_and_what):
        undo, what = undo_and_what
        problems = st.check_invariants()
        undo()
        assert problems, f"corrupting {what} went unseen"
        assert st.check_invariants() == []

    def swap(table: dict, key, value):
        old = table.get(key)
        had = key in table
        table[key] = value

        def undo() -> None:
            if had:
                table[key] = old
            else:
                del table[key]

        return undo

    with st.locked():
        pods, ctrs = st._pod_index, st._ctr_index
        for index, ident, state, pair, what in (
            (pods, pid, pb.SANDBOX_READY, ("app", "web"), "pod"),
            (ctrs, cid, pb.CONTAINER_RUNNING, ("tier", "front"), "container"),
        ):
            corrupt((swap(index.by_state, state, set()), f"{what} state index (lost)"))
            corrupt((swap(index.by_state, 99, {ident}), f"{what} state index (stale)"))
            corrupt((swap(index.by_label, pair, set()), f"{what} label index (emptied)"))
            corrupt((swap(index.by_label, ("x", "y"), {ident}), f"{what} label index (extra)"))
            corrupt((swap(index.by_label, pair, {ident, "f" * 64}), f"{what} label index (ghost)"))
        for prefix, ident, what in ((st._pod_ids, pid, "pod"), (st._ctr_ids, cid, "container")):
            prefix.discard(ident)
            prefix.add("0" * 64)
            problems = st.check_invariants()
            prefix.discard("0" * 64)
            prefix.add(ident)
            assert problems, f"{what} prefix index with a wrong ID went unseen"
        key = next(iter(st._pod_names))
        corrupt((swap(st._pod_names, key, "f" * 64), "a pod name held by the wrong ID"))
        key = next(iter(st._ctr_names))
        corrupt((swap(st._ctr_names, key, "f" * 64), "a container name held by the wrong ID"))
    assert st.check_invariants() == []


# -- failed preloads, timers, huge waits ---------------------------------------------------


def _schedulers() -> int:
    return sum(t.name == "crilab-scheduler" for t in threading.enumerate())


@pytest.mark.parametrize("ref", ["Bad Ref", "example.invalid/x"])
def test_a_failed_preload_leaves_no_thread_or_temp_dir(
    ref: str, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = _schedulers()
    for _ in range(3):
        with pytest.raises(CRIError):
            RuntimeState(images=["busybox", ref])
    assert _schedulers() == before
    assert list(tmp_path.iterdir()) == []  # no crilab-state-* directory left


def test_the_scheduler_outlives_huge_delays_and_failing_callbacks() -> None:
    scheduler = Scheduler(name="crilab-test-scheduler")
    try:
        ran = threading.Event()
        scheduler.call_later(9999999999.0, ran.set)  # `sleep 9999999999`: as good as never
        scheduler.call_at(time.monotonic() + 1e300, ran.set)
        scheduler.call_soon(lambda: 1 / 0)  # a bug in one callback (logged)
        scheduler.call_later(0.01, ran.set)
        assert ran.wait(5)
        assert scheduler.alive
    finally:
        scheduler.close()


def test_a_container_sleeping_for_centuries_freezes_no_other(k: Kit) -> None:
    pid = k.pod()
    sleeper = k.ctr(pid, "sleeper", ["sleep", "9999999999"])
    k.state.start_container(sleeper)
    time.sleep(0.3)  # the timer thread is now waiting for the sleeper's wake-up
    quick = k.ctr(pid, "quick", ["sh", "-c", "sleep 0.05; echo done"])
    k.state.start_container(quick)
    done = k.wait_state(quick, pb.CONTAINER_EXITED)
    assert (done.state, done.exit_code) == (pb.CONTAINER_EXITED, 0)
    assert k.status(sleeper).state == pb.CONTAINER_RUNNING
    k.state.stop_container(sleeper, 0)
    assert k.status(sleeper).exit_code == 137


def test_exec_with_an_int64_timeout_waits_for_its_caller(k: Kit) -> None:
    cid = k.ctr(k.pod())
    k.state.start_container(cid)
    gone = threading.Event()
    threading.Timer(0.2, gone.set).start()
    with pytest.raises(DeadlineExceeded, match="gave up"):
        k.state.exec_sync(cid, ["sleep", "infinity"], 2**63 - 1, abandoned=gone)
    assert k.state.exec_sync(cid, ["echo", "ok"], 10**10).stdout == b"ok\n"


# -- ExecSync dies with its container --------------------------------------------------------


@pytest.mark.parametrize("how", ["stop", "remove", "stop pod", "remove pod"])
def test_an_exec_ends_when_its_container_goes(k: Kit, how: str) -> None:
    pid = k.pod()
    cid = k.ctr(pid)
    k.state.start_container(cid)
    answer: list[object] = []

    def exec_in_it() -> None:
        try:
            answer.append(k.state.exec_sync(cid, ["sh", "-c", "echo before; sleep 30; echo after"]))
        except CRIError as exc:
            answer.append(exc)

    thread = threading.Thread(target=exec_in_it)
    thread.start()
    deadline = time.monotonic() + 5
    while not k.state.containers[cid].execs and time.monotonic() < deadline:
        time.sleep(0.01)
    {
        "stop": lambda: k.state.stop_container(cid, 0),
        "remove": lambda: k.state.remove_container(cid),
        "stop pod": lambda: k.state.stop_pod_sandbox(pid),
        "remove pod": lambda: k.state.remove_pod_sandbox(pid),
    }[how]()
    thread.join(10)
    assert not thread.is_alive(), "the exec outlived its container"
    [result] = answer
    assert isinstance(result, pb.ExecSyncResponse), result
    assert (result.stdout, result.exit_code) == (b"before\n", 137)


# -- StartContainer: a missing program, a log that cannot be opened ---------------------------


def test_starting_a_missing_program_is_a_start_error(k: Kit) -> None:
    pid = k.pod()
    cid = k.ctr(pid, "ghost", ["nosuchbinary", "--flag"])
    with k.state.events.subscribe() as sub:
        with pytest.raises(FailedPrecondition) as err:
            k.state.start_container(cid)
        event = sub.get(timeout=2)
    assert 'exec: "nosuchbinary": executable file not found in $PATH' in err.value.message
    assert "sleep" in err.value.message  # names programs that do exist
    status = k.status(cid)
    assert (status.state, status.exit_code, status.reason) == (
        pb.CONTAINER_EXITED,
        128,
        "StartError",
    )
    assert status.message.endswith('exec: "nosuchbinary": executable file not found in $PATH')
    assert status.message.startswith("failed to create containerd task")  # containerd's words
    assert status.started_at == 0 and status.finished_at > 0
    assert event.container_event_type == pb.CONTAINER_STOPPED_EVENT
    with pytest.raises(FailedPrecondition, match="CONTAINER_EXITED"):
        k.state.start_container(cid)
    # through a shell, the shell starts and reports the missing program itself
    shell = k.ctr(pid, "shell", ["sh", "-c", "nosuchbinary"])
    k.state.start_container(shell)
    status = k.wait_state(shell, pb.CONTAINER_EXITED)
    assert (status.exit_code, status.reason) == (127, "Error")
    assert b"sh: nosuchbinary: not found" in Path(status.log_path).read_bytes()


@pytest.mark.parametrize("breakage", ["directory is a file", "log is a directory"])
def test_a_log_that_cannot_be_opened_fails_start_and_changes_nothing(k: Kit, breakage: str) -> None:
    pid = k.pod()
    cid = k.ctr(pid)
    log_path = Path(k.status(cid).log_path)
    log_path.unlink()
    if breakage == "directory is a file":
        log_path.parent.rmdir()
        log_path.parent.write_text("in the way")
    else:
        log_path.mkdir()
    generation = k.state.containers_generation
    with k.state.events.subscribe() as sub:
        with pytest.raises(FailedPrecondition) as err:
            k.state.start_container(cid)
        assert sub.get(timeout=0.1) is None  # nothing happened, so nothing was announced
    assert str(log_path) in err.value.message and "StartContainer again" in err.value.message
    assert k.status(cid).state == pb.CONTAINER_CREATED
    assert k.state.containers_generation == generation
    assert k.state.containers[cid].run is None
    # fixed: it starts
    if breakage == "directory is a file":
        log_path.parent.unlink()
    else:
        log_path.rmdir()
    k.state.start_container(cid)
    assert k.status(cid).state == pb.CONTAINER_RUNNING


def test_reopen_that_fails_keeps_the_old_log(k: Kit) -> None:
    cid = k.ctr(k.pod(), command=["sh", "-c", "while true; do echo tick; sleep 0.05; done"])
    k.state.start_container(cid)
    log_path = Path(k.status(cid).log_path)
    moved = log_path.with_name("moved.log")
    log_path.rename(moved)
    log_path.mkdir()  # the kubelet's new file cannot be made
    with pytest.raises(FailedPrecondition, match="keeps writing"):
        k.state.reopen_container_log(cid)
    size = moved.stat().st_size
    deadline = time.monotonic() + 5
    while moved.stat().st_size == size and time.monotonic() < deadline:
        time.sleep(0.02)
    assert moved.stat().st_size > size  # still logging, to the file it had
    assert k.status(cid).state == pb.CONTAINER_RUNNING


# -- logs of removed containers ---------------------------------------------------------------


def test_remove_deletes_logs_only_in_the_runtimes_own_directory(k: Kit) -> None:
    config = pod_config("own")
    config.log_directory = ""  # the runtime picks the directory (the builder would not)
    own_pod = k.state.run_pod_sandbox(config)
    named_pod = k.pod("named")
    own, named = k.ctr(own_pod, "a"), k.ctr(named_pod, "b")
    own_log, named_log = Path(k.status(own).log_path), Path(k.status(named).log_path)
    assert own_log.is_relative_to(k.state.root) and own_log.exists()
    assert named_log.is_relative_to(k.logs) and named_log.exists()
    k.state.start_container(own)
    k.state.remove_container(own)
    k.state.remove_container(named)
    assert not own_log.exists() and not own_log.parent.exists()
    assert named_log.exists()  # the client's directory: never deleted (as containerd)
    again = k.ctr(own_pod, "a")  # the directory comes back for the next container
    assert Path(k.status(again).log_path).exists()
    k.state.remove_pod_sandbox(own_pod)
    assert not (k.state.root / "logs" / own_pod).exists()


# -- runtime handlers and image references -----------------------------------------------------


def test_only_the_configured_runtime_handlers_are_taken(k: Kit) -> None:
    assert k.state.run_pod_sandbox(pod_config("a", log_directory=str(k.logs)), "runc")
    assert k.state.run_pod_sandbox(pod_config("b", log_directory=str(k.logs)), "")
    with pytest.raises(NotFound, match=r"no runtime for .kata-nonexistent. is configured") as err:
        k.state.run_pod_sandbox(pod_config("c", log_directory=str(k.logs)), "kata-nonexistent")
    assert '"runc"' in err.value.message
    assert len(k.state.pods) == 2


def test_a_malformed_image_reference_is_explained(k: Kit) -> None:
    with pytest.raises(NotFound) as err:
        k.ctr(k.pod(), image="Bad Ref")
    assert "whitespace" in err.value.message and "crictl pull" not in err.value.message


# -- events: order, bytes, size ----------------------------------------------------------------


def test_events_arrive_in_the_order_of_transitions(k: Kit) -> None:
    """Stops and removes race (and exits on their own): per container, the events a
    subscriber sees are CREATED, STARTED, STOPPED, DELETED, never DELETED first."""
    pid = k.pod()

    def stop(cid: str) -> None:
        with contextlib.suppress(NotFound):  # removed first: that race is the point
            k.state.stop_container(cid, 0)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: provoke reordering
    try:
        with k.state.events.subscribe(queue_size=100_000) as sub:
            for round_ in range(40):
                cids = [
                    k.ctr(
                        pid,
                        f"r{round_}-{i}",
                        ["sh", "-c", "exit 0"] if i % 2 else ["sleep", "infinity"],
                    )
                    for i in range(6)
                ]
                for cid in cids:
                    k.state.start_container(cid)
                threads = [threading.Thread(target=stop, args=(c,)) for c in cids] + [
                    threading.Thread(target=k.state.remove_container, args=(c,)) for c in cids
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            seen: dict[str, list[int]] = {}
            while (event := sub.get(timeout=0.5)) is not None:
                seen.setdefault(event.container_id, []).append(event.container_event_type)
    finally:
        sys.setswitchinterval(interval)
    expected = [
        pb.CONTAINER_CREATED_EVENT,
        pb.CONTAINER_STARTED_EVENT,
        pb.CONTAINER_STOPPED_EVENT,
        pb.CONTAINER_DELETED_EVENT,
    ]
    wrong = {cid[:8]: kinds for cid, kinds in seen.items() if kinds != expected}
    assert len(seen) == 240 and not wrong


def test_a_stalled_subscriber_holds_bounded_bytes(k: Kit) -> None:
    pid = k.pod()
    k.ctr(pid, "fat", annotations={"a": "x" * (512 << 10)})  # every event copies its status
    stalled = k.state.events.subscribe()
    try:
        for i in range(100):
            k.state.remove_container(k.ctr(pid, f"c{i}", ["true"]))
        assert stalled.queued_bytes <= k.state.events.queue_bytes
        assert 0 < len(stalled) < 200 and stalled.dropped == 200 - len(stalled)
        events = [stalled.get(timeout=1) for _ in range(len(stalled))]
        assert events[-1].container_event_type == pb.CONTAINER_DELETED_EVENT  # the newest kept
        assert stalled.queued_bytes == 0
    finally:
        stalled.close()


def test_an_event_too_big_for_one_message_is_trimmed(k: Kit) -> None:
    pid = k.pod()
    with k.state.events.subscribe(queue_bytes=200 << 20) as sub:
        for i in range(5):  # 5 x 4 MiB of annotations: every event of the pod would be 20 MiB
            k.ctr(pid, f"big{i}", annotations={"a": "x" * (4 << 20)})
        small = k.ctr(pid, "small")
        events = [sub.get(timeout=2) for _ in range(6)]
    for event in events:
        assert event.ByteSize() <= MAX_EVENT_BYTES
    last = events[-1]
    assert last.container_id == small
    assert [s.id for s in last.containers_statuses] == [small]  # its own status is kept
    assert "over the 16 MiB" in last.pod_sandbox_status.annotations[EVENT_TRIMMED_NOTE]
    assert EVENT_TRIMMED_NOTE not in events[0].pod_sandbox_status.annotations  # 4 MiB: fits
