"""The kubelet-style client against a real FakeRuntime over real sockets."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

import crilab
from crilab import FakeRuntime
from crilab.builders import container_config, pod_config
from crilab.client import (
    ENDPOINT_ENV,
    Client,
    IncompatibleRuntime,
    RuntimeUnavailable,
    connect,
    parse_cri_log,
)
from crilab.stubs import api_pb2 as pb
from crilab.stubs import api_pb2_grpc

BUSYBOX = "localhost/crilab/busybox:local"


@pytest.fixture
def rt() -> Iterator[FakeRuntime]:
    with FakeRuntime(images=[BUSYBOX]) as runtime:
        yield runtime


@pytest.fixture
def client(rt: FakeRuntime) -> Iterator[Client]:
    with connect(rt.endpoint) as c:
        yield c


def wait_state(client: Client, cid: str, state: int, within: float = 10.0) -> pb.ContainerStatus:
    deadline = time.monotonic() + within
    while True:
        status = client.container_status(cid)
        if status.state == state or time.monotonic() > deadline:
            return status
        time.sleep(0.02)


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- connecting --------------------------------------------------------------------


def test_public_names() -> None:
    assert crilab.connect is connect
    assert crilab.Client is Client
    assert issubclass(RuntimeUnavailable, ConnectionError)
    assert issubclass(IncompatibleRuntime, RuntimeUnavailable)


@pytest.mark.parametrize("listen", [None, "tcp://127.0.0.1:0"], ids=["unix", "tcp"])
def test_whole_lifecycle(listen: str | None) -> None:
    with FakeRuntime(listen, images=[BUSYBOX]) as rt, connect(rt.endpoint) as client:
        assert client.endpoint == rt.endpoint
        assert client.version().runtime_api_version == "v1"
        conditions = {c.type: c.status for c in client.status().status.conditions}
        assert conditions["RuntimeReady"] is True

        pod_cfg = pod_config("web", labels={"app": "web"})
        pod_id = client.run_pod_sandbox(pod_cfg)
        assert client.pod_sandbox_status(pod_id).status.state == pb.SANDBOX_READY
        assert [p.id for p in client.list_pod_sandbox(state="READY")] == [pod_id]
        assert [p.id for p in client.list_pod_sandbox(labels={"app": "web"})] == [pod_id]
        assert client.list_pod_sandbox(labels={"app": "other"}) == []

        cfg = container_config("app", BUSYBOX, ["sleep", "infinity"], labels={"tier": "x"})
        cid = client.create_container(pod_id, cfg, pod_cfg)
        assert client.container_status(cid).state == pb.CONTAINER_CREATED
        client.start_container(cid)
        assert wait_state(client, cid, pb.CONTAINER_RUNNING).state == pb.CONTAINER_RUNNING
        running = client.list_containers(pod_id=pod_id, state="RUNNING")
        assert [c.id for c in running] == [cid]
        assert client.list_containers(state=pb.CONTAINER_EXITED) == []
        assert [c.id for c in client.list_containers(labels={"tier": "x"})] == [cid]

        out = client.exec_sync(cid, ["echo", "hi"], timeout_seconds=5)
        assert (out.exit_code, out.stdout) == (0, b"hi\n")
        assert client.container_stats(cid).attributes.id == cid
        assert [s.attributes.id for s in client.list_container_stats(pod_id=pod_id)] == [cid]

        client.stop_container(cid, timeout_seconds=1)
        assert wait_state(client, cid, pb.CONTAINER_EXITED).state == pb.CONTAINER_EXITED
        client.remove_container(cid)
        assert client.list_containers() == []
        client.stop_pod_sandbox(pod_id)
        assert [p.id for p in client.list_pod_sandbox(state="SANDBOX_NOTREADY")] == [pod_id]
        client.remove_pod_sandbox(pod_id)
        assert client.list_pod_sandbox() == []

        assert [i.id for i in client.list_images(BUSYBOX)] == [client.image_status(BUSYBOX).id]
        assert client.image_fs_info().image_filesystems


def test_images_and_ensure_image(rt: FakeRuntime, client: Client) -> None:
    assert client.image_status("alpine") is None  # missing is OK with no image, not an error
    rt.clear_calls()
    first = client.ensure_image("alpine")
    assert [c.method for c in rt.calls] == ["ImageStatus", "PullImage"]
    rt.clear_calls()
    second = client.ensure_image("alpine")
    assert [c.method for c in rt.calls] == ["ImageStatus"]  # IfNotPresent: no second pull
    assert first == second == client.image_status("alpine").id
    assert len(client.list_images()) == 2
    client.remove_image("alpine")
    assert client.image_status("alpine") is None
    assert client.pull_image("alpine") == first


def test_connect_over_unix_forms(rt: FakeRuntime) -> None:
    path = rt.endpoint.removeprefix("unix://")
    for form in (f"unix:{path}", path):
        with connect(form) as c:
            assert c.version().runtime_api_version == "v1"


def test_default_endpoint_from_env(rt: FakeRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENDPOINT_ENV, rt.endpoint)
    with connect() as c:
        assert c.endpoint == rt.endpoint
        assert c.version().runtime_name


def test_no_endpoint_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    with pytest.raises(RuntimeUnavailable) as info:
        connect()
    message = str(info.value)
    assert ENDPOINT_ENV in message
    assert "crilab.FakeRuntime()" in message and "crilab serve" in message


#: Far beyond any dial on this machine: a bound that proves "no hang", never a speed test.
NO_HANG = 30.0


def test_a_missing_socket_fails_at_once() -> None:
    with tempfile.TemporaryDirectory(prefix="crilab-") as tmp:
        endpoint = f"unix://{tmp}/nobody.sock"
        started = time.monotonic()
        with pytest.raises(RuntimeUnavailable) as info:
            connect(endpoint, timeout=120)  # a dial would wait all of it: there is none
        took = time.monotonic() - started
    assert took < NO_HANG
    assert info.value.endpoint == endpoint
    assert endpoint in str(info.value)
    assert "FakeRuntime" in str(info.value)
    assert "no socket" in str(info.value)


def test_a_path_that_is_not_a_socket_fails_at_once() -> None:
    with tempfile.TemporaryDirectory(prefix="crilab-") as tmp:
        path = os.path.join(tmp, "runtime.txt")
        with open(path, "w") as handle:
            handle.write("not a socket")
        started = time.monotonic()
        with pytest.raises(RuntimeUnavailable, match="is not a socket"):
            connect(path, timeout=120)
        assert time.monotonic() - started < NO_HANG


def stale_socket(directory: str) -> str:
    """A socket file nothing listens on: what a runtime killed with SIGKILL leaves."""
    path = os.path.join(directory, "stale.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)  # bound, never listening, then closed: connect() is refused
    return path


@pytest.mark.parametrize("kind", ["stale unix socket", "tcp port"])
def test_the_dial_gives_up_after_its_timeout(kind: str) -> None:
    with tempfile.TemporaryDirectory(prefix="crilab-") as tmp:
        if kind == "tcp port":
            endpoint, why = f"tcp://127.0.0.1:{free_tcp_port()}", "nothing is listening on port"
        else:
            endpoint, why = f"unix://{stale_socket(tmp)}", "stale"
        started = time.monotonic()
        with pytest.raises(RuntimeUnavailable) as info:
            connect(endpoint, timeout=1.0)
        took = time.monotonic() - started
    assert took < 1.0 + NO_HANG  # the dial's deadline holds: an error, not a hang
    message = str(info.value)
    assert endpoint in message and "within 1s" in message and why in message
    assert "FakeRuntime" in message


_AS_ANOTHER_USER = """
import os, sys, time
import crilab.client as c
if os.geteuid() == 0:  # root may open anything: become nobody to meet the permissions
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
for path in sys.argv[1:]:
    started = time.monotonic()
    try:
        c.connect(path, timeout=120)
    except c.RuntimeUnavailable as err:
        print(f"{time.monotonic() - started:.3f} {err}")
"""


def test_permission_denied_says_so_at_once() -> None:
    base = tempfile.mkdtemp(prefix="crilab-perm-")
    try:
        os.chmod(base, 0o755)
        listener = socket.socket(socket.AF_UNIX)
        open_dir = os.path.join(base, "open")
        closed_dir = os.path.join(base, "closed")
        os.mkdir(open_dir, 0o755)
        os.mkdir(closed_dir, 0o700)
        root_only = os.path.join(open_dir, "root.sock")  # like /run/containerd/containerd.sock
        listener.bind(root_only)
        listener.listen()
        hidden = os.path.join(closed_dir, "hidden.sock")
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(hidden)
        if os.geteuid() != 0:  # the owner meets the same refusals with no permission bits
            os.chmod(root_only, 0)
            os.chmod(closed_dir, 0)
        else:
            os.chmod(root_only, 0o600)
        done = subprocess.run(
            [sys.executable, "-c", _AS_ANOTHER_USER, root_only, hidden],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        listener.close()
        os.chmod(closed_dir, 0o700)
        shutil.rmtree(base)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert f"permission denied on {root_only}" in first and "sudo" in first
    assert f"permission denied on a directory above {hidden}" in second
    assert all(float(line.split()[0]) < NO_HANG for line in (first, second))


class OldRuntime(api_pb2_grpc.RuntimeServiceServicer):
    """A runtime that answers Version with an API version crilab does not speak."""

    def Version(self, request, context):
        return pb.VersionResponse(
            version="0.1.0",
            runtime_name="oldtainerd",
            runtime_version="1.5.0",
            runtime_api_version="v1alpha2",
        )


@pytest.fixture
def tiny_server() -> Iterator[tuple[grpc.Server, str]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    yield server, f"tcp://127.0.0.1:{port}"
    server.stop(0).wait()


def test_wrong_api_version(tiny_server: tuple[grpc.Server, str]) -> None:
    server, endpoint = tiny_server
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(OldRuntime(), server)
    server.start()
    with pytest.raises(IncompatibleRuntime) as info:
        connect(endpoint)
    assert info.value.api_version == "v1alpha2"
    assert "v1alpha2" in str(info.value) and "v1" in str(info.value)
    assert endpoint in str(info.value)
    # the advice names versions that do speak runtime.v1 (containerd 1.6 does)
    assert "containerd 1.6 or newer" in str(info.value) and "1.7" not in str(info.value)


def test_server_without_runtime_v1(tiny_server: tuple[grpc.Server, str]) -> None:
    server, endpoint = tiny_server  # no services at all: every method is UNIMPLEMENTED
    server.start()
    with pytest.raises(IncompatibleRuntime) as info:
        connect(endpoint)
    assert "UNIMPLEMENTED" in str(info.value) and "runtime.v1" in str(info.value)
    assert "containerd 1.6 or newer" in str(info.value)


def test_connect_asks_version_v1_and_checks_runtime_api_version(rt: FakeRuntime) -> None:
    rt.clear_calls()
    with connect(rt.endpoint) as c:
        assert [call.method for call in rt.calls] == ["Version"]  # one call, as documented
        assert c.version().runtime_api_version == "v1"


# -- the 16 MiB receive limit ------------------------------------------------------------


def test_connect_receives_lists_past_grpcs_4_mib_default(rt: FakeRuntime, tmp_path) -> None:
    # about 6 MiB of containers, made through rt.state (far quicker than 300 RPCs)
    pod = rt.state.run_pod_sandbox(pod_config("big", log_directory=str(tmp_path)))
    notes = {f"note-{i}": "v" * 2_500 for i in range(8)}  # 20 KB a container
    for i in range(300):
        cfg = container_config(f"c{i}", BUSYBOX, ["sleep", "infinity"], annotations=notes)
        rt.state.create_container(pod, cfg)
    size = pb.ListContainersResponse(containers=rt.state.list_containers()).ByteSize()
    assert 4 * 1024 * 1024 < size < 16 * 1024 * 1024

    with connect(rt.endpoint) as c:  # the kubelet's 16 MiB receive limit
        assert len(c.list_containers()) == 300

    plain = grpc.insecure_channel(rt.endpoint.replace("unix://", "unix:", 1))  # 4 MiB default
    try:
        with pytest.raises(grpc.RpcError) as info:
            api_pb2_grpc.RuntimeServiceStub(plain).ListContainers(
                pb.ListContainersRequest(), timeout=30
            )
    finally:
        plain.close()
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in info.value.details()


# -- errors are the runtime's own ------------------------------------------------------


def test_errors_are_raised_unchanged(client: Client) -> None:
    pod_id = client.run_pod_sandbox(pod_config("web"))
    cid = client.create_container(pod_id, container_config("app", BUSYBOX, ["sleep", "infinity"]))
    client.start_container(cid)
    with pytest.raises(grpc.RpcError) as info:
        client.start_container(cid)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as info:
        client.container_status("0" * 64)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        client.run_pod_sandbox(pb.PodSandboxConfig())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_injected_error_and_timeout_override(rt: FakeRuntime, client: Client) -> None:
    rt.inject_error("Version", "UNAVAILABLE", "going away")
    with pytest.raises(grpc.RpcError) as info:
        client.version()
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.UNAVAILABLE, "going away")
    rt.inject_latency(1.0, method="Version", times=1)
    with pytest.raises(grpc.RpcError) as info:
        client.version(timeout=0.05)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_bad_state_name(client: Client) -> None:
    with pytest.raises(ValueError, match="RUNNING"):
        client.list_containers(state="SLEEPING")


# -- events and logs -------------------------------------------------------------------


def test_container_events_can_be_cancelled(client: Client) -> None:
    pod_id = client.run_pod_sandbox(pod_config("web"))
    seen: list[int] = []
    events = client.container_events()
    got_one = threading.Event()

    def watch() -> None:
        for event in events:
            seen.append(event.container_event_type)
            got_one.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    deadline = time.monotonic() + 10
    while not got_one.is_set() and time.monotonic() < deadline:
        # the subscription may start after the first create: keep making containers
        client.create_container(
            pod_id, container_config(f"c{len(seen)}-{time.monotonic_ns()}", BUSYBOX, ["true"])
        )
        got_one.wait(0.1)
    events.close()
    watcher.join(timeout=10)
    assert not watcher.is_alive()  # iteration ended quietly, no CANCELLED raised
    assert pb.CONTAINER_CREATED_EVENT in seen


def test_logs_of_an_exited_container(client: Client) -> None:
    pod_cfg = pod_config("logs")
    pod_id = client.run_pod_sandbox(pod_cfg)
    cfg = container_config("echo", BUSYBOX, ["sh", "-c", "echo one; echo two"])
    cid = client.create_container(pod_id, cfg, pod_cfg)
    client.start_container(cid)
    status = wait_state(client, cid, pb.CONTAINER_EXITED)
    assert status.state == pb.CONTAINER_EXITED
    assert os.path.isabs(status.log_path)
    assert client.logs(cid) == ["one", "two"]
    assert client.logs(cid, tail=1) == ["two"]
    assert client.logs(cid, stream="stderr") == []


def test_parse_cri_log_joins_partial_lines() -> None:
    records = [
        "2024-01-01T00:00:00.000000000Z stdout P hel\n",
        "2024-01-01T00:00:00.000000001Z stderr F oops\n",
        "2024-01-01T00:00:00.000000002Z stdout F lo world\n",
        "2024-01-01T00:00:00.000000003Z stdout F \n",
    ]
    assert parse_cri_log(records) == ["oops", "hello world", ""]
    assert parse_cri_log(records, stream="stdout") == ["hello world", ""]


# -- the notebook helper: crilab.notebook.lab() ------------------------------------------


@pytest.fixture
def no_lab(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No kernel-wide Lab before the test; the one it leaves is closed after."""
    from crilab import notebook

    monkeypatch.setattr(notebook, "_current", None)
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    yield
    if notebook._current is not None:
        notebook._close(notebook._current)


def test_lab_cleanup_removes_only_the_notebooks_pods(rt: FakeRuntime, client: Client, capsys):
    from crilab.builders import NOTEBOOK_LABELS
    from crilab.notebook import Lab
    from crilab.widgets import LifecyclePanel

    # somebody else's pod, as on a real node: it must survive, container and all
    system_cfg = pod_config("kube-proxy", "kube-system", labels={"k8s-app": "kube-proxy"})
    system = client.run_pod_sandbox(system_cfg)
    proxy = client.create_container(
        system, container_config("proxy", BUSYBOX, ["sleep", "infinity"]), system_cfg
    )
    client.start_container(proxy)

    lab = Lab(connect(rt.endpoint), rt, BUSYBOX, host_network=False)
    mine = lab.pod_config("web", labels={"app": "web"})
    assert dict(mine.labels) == {"app": "web", **NOTEBOOK_LABELS}
    web = client.run_pod_sandbox(mine)
    client.create_container(web, lab.container_config("app", ["sleep", "infinity"]), mine)
    client.run_pod_sandbox(lab.pod_config("db"))
    panel = LifecyclePanel(lab.client, image=BUSYBOX)
    try:
        panel.run_pod_button.click()
        assert panel.pod_id in {p.id for p in client.list_pod_sandbox(labels=NOTEBOOK_LABELS)}
    finally:
        panel.close()
    assert len(client.list_pod_sandbox()) == 4

    lab.cleanup()
    assert [p.id for p in client.list_pod_sandbox()] == [system]
    assert [c.id for c in client.list_containers()] == [proxy]
    assert client.container_status(proxy).state == pb.CONTAINER_RUNNING
    assert "left 1 pod(s) alone" in capsys.readouterr().out
    lab.cleanup()  # nothing of ours left: a second call is harmless
    assert [p.id for p in client.list_pod_sandbox()] == [system]
    lab.client.close()


def test_lab_says_when_it_reuses_and_follows_the_endpoint_variable(
    no_lab: None, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from crilab import notebook

    first = notebook.lab([BUSYBOX])
    assert first.fake and "Using crilab's fake runtime" in capsys.readouterr().out
    assert first.crictl_command() == first.runtime.crictl_command()
    assert notebook.lab([BUSYBOX]) is first
    assert f"Reusing crilab's fake runtime at {first.endpoint}" in capsys.readouterr().out

    with FakeRuntime(images=[BUSYBOX]) as other:  # stands in for a real containerd
        monkeypatch.setenv(ENDPOINT_ENV, other.endpoint)
        real = notebook.lab()
        out = capsys.readouterr().out
        assert f"{ENDPOINT_ENV} changed (unset -> {other.endpoint})" in out
        assert f"Using the runtime at {other.endpoint}" in out
        assert not real.fake and real.endpoint == other.endpoint and real.host_network
        assert not first.runtime.running  # the old fake was stopped, not leaked
        ep = other.endpoint
        assert real.crictl_command() == f"crictl --runtime-endpoint {ep} --image-endpoint {ep}"
        assert notebook.lab() is real
        assert "Reusing the runtime at" in capsys.readouterr().out

        monkeypatch.setenv(ENDPOINT_ENV, "unix:///nonexistent/crilab-test.sock")
        with pytest.raises(RuntimeUnavailable):
            notebook.lab()
        assert notebook._current is None  # no closed Lab left to be "reused"

    monkeypatch.delenv(ENDPOINT_ENV)
    back = notebook.lab([BUSYBOX])
    assert back.fake and back.runtime.running
    assert "Using crilab's fake runtime" in capsys.readouterr().out


# -- where the builders put logs ----------------------------------------------------------

_LOGS_IN_A_FRESH_PROCESS = """
import os, stat, sys, tempfile, time
import crilab
from crilab import builders
from crilab.builders import container_config, pod_config

own = pod_config("kept", log_directory=sys.argv[1])
assert not builders._log_dirs, "a given log_directory must not make the default one"
rt = crilab.FakeRuntime(images=["busybox"])
client = crilab.connect(rt.endpoint)
cfg = pod_config("web")
pod = client.run_pod_sandbox(cfg)
cid = client.create_container(pod, container_config("app", "busybox", ["echo", "hi"]), cfg)
client.start_container(cid)
deadline = time.monotonic() + 30
while client.logs(cid) != ["hi"] and time.monotonic() < deadline:
    time.sleep(0.05)
base = builders.default_log_directory()
print(base)
print(oct(stat.S_IMODE(os.stat(base).st_mode)))
print(client.container_status(cid).log_path)
print(client.logs(cid))
tempfile.tempdir = sys.argv[2]  # as the tests that keep files in their own tmp do
print(builders.default_log_directory())
"""


def test_builders_logs_go_to_a_private_directory_removed_at_exit(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _LOGS_IN_A_FRESH_PROCESS, str(tmp_path / "kept"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    base, mode, log_path, lines, moved = done.stdout.splitlines()
    assert mode == "0o700" and os.path.basename(base).startswith("crilab-logs-")
    assert log_path.startswith(base + os.sep) and lines == "['hi']"
    assert os.path.dirname(moved) == str(tmp_path)  # a new temp dir, a new log directory
    assert not os.path.exists(base) and not os.path.exists(moved)  # gone with the process
