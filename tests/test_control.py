"""crilab's control service: `crilab serve` in a subprocess, steered over its own socket."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from crilab import FakeRuntime, helloworld
from crilab.builders import pod_config
from crilab.client import RuntimeUnavailable
from crilab.runtime.control import RemoteControl
from crilab.runtime.instrument import Lognormal
from crilab.stubs import api_pb2 as pb
from crilab.stubs import api_pb2_grpc, control_pb2, control_pb2_grpc

from .conftest import eventually, find_crictl, require

pytestmark = pytest.mark.timeout(180)
C = grpc.StatusCode


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[str]:
    """`crilab serve` in its own process; its endpoint. Stopped (and checked) at the end."""
    sock = tmp_path_factory.mktemp("control") / "rt.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "crilab", "serve", "--listen", f"unix://{sock}", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    endpoint = proc.stdout.readline().strip()
    assert endpoint == f"unix://{sock}", proc.stderr.read() if proc.poll() is not None else ""
    yield endpoint
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0, "crilab serve exits cleanly on SIGTERM"
    assert not sock.exists(), "crilab serve removes its socket"
    proc.stdout.close()
    proc.stderr.close()


@pytest.fixture
def ctl(served: str) -> Iterator[RemoteControl]:
    with RemoteControl(served) as control:
        control.reset()  # each test starts from a fresh runtime
        yield control
        control.reset()


@pytest.fixture
def channel(served: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(served.replace("unix://", "unix:", 1)) as ch:
        yield ch


@pytest.fixture
def rs(channel: grpc.Channel) -> api_pb2_grpc.RuntimeServiceStub:
    return api_pb2_grpc.RuntimeServiceStub(channel)


def code_of(call, request, timeout: float = 10) -> C:
    try:
        call(request, timeout=timeout)
    except grpc.RpcError as err:
        return err.code()
    return C.OK


# -- through RemoteControl ------------------------------------------------------------------


def test_errors_injected_from_outside(ctl: RemoteControl, rs) -> None:
    ctl.inject_error("Version", "UNAVAILABLE", "from outside", times=2)
    with pytest.raises(grpc.RpcError) as err:
        rs.Version(pb.VersionRequest(), timeout=10)
    assert (err.value.code(), err.value.details()) == (C.UNAVAILABLE, "from outside")
    assert code_of(rs.Version, pb.VersionRequest()) == C.UNAVAILABLE
    assert code_of(rs.Version, pb.VersionRequest()) == C.OK
    calls = ctl.calls()  # the control calls themselves are not in the history
    assert [(c.method, c.code, c.injected) for c in calls] == [
        ("Version", "UNAVAILABLE", "error"),
        ("Version", "UNAVAILABLE", "error"),
        ("Version", "OK", ""),
    ]
    assert calls[0].details == "from outside" and calls[0].service == "runtime.v1.RuntimeService"
    assert all(c.duration >= 0 and c.started > 0 and c.peer for c in calls)
    assert [c.ok for c in ctl.calls_to("Version")] == [False, False, True]
    assert [c.code for c in ctl.calls(limit=1)] == ["OK"]


def test_a_seeded_probability_from_outside(ctl: RemoteControl, rs) -> None:
    ctl.inject_error("Status", grpc.StatusCode.INTERNAL, probability=0.5, seed=11, times=None)
    first = [code_of(rs.Status, pb.StatusRequest()) for _ in range(30)]
    assert {C.OK, C.INTERNAL} == set(first)
    ctl.clear_faults()
    ctl.inject_error("Status", "INTERNAL", probability=0.5, seed=11, times=None)
    assert [code_of(rs.Status, pb.StatusRequest()) for _ in range(30)] == first


def test_latency_from_outside_ends_at_the_deadline_or_on_clear(ctl: RemoteControl, rs) -> None:
    ctl.inject_latency(60, method="Version")
    assert code_of(rs.Version, pb.VersionRequest(), timeout=0.5) == C.DEADLINE_EXCEEDED
    assert eventually(lambda: len(ctl.calls_to("Version")) == 1)
    (late,) = ctl.calls_to("Version")
    assert late.code == "DEADLINE_EXCEEDED" and "deadline passed" in late.injected
    pending = rs.Version.future(pb.VersionRequest(), timeout=60)
    assert eventually(lambda: ctl.waiting() == 1)
    ctl.clear_faults()
    assert pending.result(timeout=10).runtime_api_version == "v1"  # at once, not in 60 s
    cleared = ctl.calls_to("Version")[-1]
    assert cleared.ok and cleared.injected.startswith("latency 60.000s (cleared after")
    assert ctl.waiting() == 0
    ctl.inject_latency(60, method="Version", ignore_deadline=True)
    assert code_of(rs.Version, pb.VersionRequest(), timeout=0.2) == C.DEADLINE_EXCEEDED
    assert eventually(lambda: ctl.waiting() == 1)  # works on for a caller that has gone
    ctl.clear_faults()
    assert eventually(lambda: ctl.waiting() == 0)


def test_a_seeded_lognormal_from_outside(ctl: RemoteControl, rs) -> None:
    ctl.inject_latency(Lognormal(p50=0.002, p99=0.01, seed=3), method="Status", times=3)
    for _ in range(4):
        rs.Status(pb.StatusRequest(), timeout=10)
    local = Lognormal(p50=0.002, p99=0.01, seed=3)
    expected = [f"latency {local():.3f}s" for _ in range(3)] + [""]
    assert [c.injected for c in ctl.calls_to("Status")] == expected


def test_a_fault_on_every_method_does_not_lock_the_controller_out(ctl: RemoteControl, rs) -> None:
    ctl.inject_error("*", "UNAVAILABLE", times=None)
    ctl.inject_latency(60)
    assert code_of(rs.Version, pb.VersionRequest(), timeout=0.5) in (
        C.UNAVAILABLE,
        C.DEADLINE_EXCEEDED,
    )
    assert eventually(lambda: len(ctl.calls()) == 1)  # control calls are neither faulted
    ctl.clear_faults()  # nor delayed
    assert code_of(rs.Version, pb.VersionRequest()) == C.OK


def test_reset_from_outside(ctl: RemoteControl, rs) -> None:
    rs.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config("web")), timeout=10)
    ctl.inject_error("ListPodSandbox", "UNAVAILABLE", times=None)
    ctl.reset()
    assert list(rs.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items) == []
    assert [(c.method, c.code) for c in ctl.calls()] == [("ListPodSandbox", "OK")]


def test_mistakes_get_the_instruments_teaching_errors(ctl: RemoteControl) -> None:
    with pytest.raises(ValueError, match=r"did you mean 'StartContainer'\?"):
        ctl.inject_error("startcontainer", "UNAVAILABLE")  # checked by the server
    with pytest.raises(ValueError, match="unknown gRPC status code 'NOPE'"):
        ctl.inject_error("Version", "NOPE")
    with pytest.raises(ValueError, match="non-OK"):
        ctl.inject_error("Version", "OK")
    with pytest.raises(ValueError, match="between 0 and 1"):
        ctl.inject_error("Version", "UNAVAILABLE", probability=2)
    with pytest.raises(ValueError, match="times=0 would inject nothing"):
        ctl.inject_error("Version", "UNAVAILABLE", times=0)
    with pytest.raises(ValueError, match="finite number of seconds"):
        ctl.inject_latency(float("nan"))
    with pytest.raises(TypeError, match="cannot be sent to another process"):
        ctl.inject_latency(lambda: 0.1)
    with pytest.raises(ValueError, match="did you mean 'Version'"):
        ctl.calls("version")
    assert ctl.calls() == []  # nothing was injected, nothing was called


def test_the_server_checks_raw_requests_too(channel: grpc.Channel, ctl: RemoteControl) -> None:
    stub = control_pb2_grpc.ControlStub(channel)

    def refused(call, request) -> str:
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=10)
        assert err.value.code() == C.INVALID_ARGUMENT
        return err.value.details()

    both = control_pb2.InjectErrorRequest(method="Version", code="UNAVAILABLE", times=2)
    both.until_cleared = True
    assert "not both" in refused(stub.InjectError, both)
    assert "code is missing" in refused(stub.InjectError, control_pb2.InjectErrorRequest())
    assert "delay is missing" in refused(stub.InjectLatency, control_pb2.InjectLatencyRequest())
    backwards = control_pb2.InjectLatencyRequest(
        lognormal=control_pb2.Lognormal(p50_seconds=0.05, p99_seconds=0.01)
    )
    assert "p50 <= p99" in refused(stub.InjectLatency, backwards)
    negative = control_pb2.InjectLatencyRequest(seconds=-1)
    assert ">= 0" in refused(stub.InjectLatency, negative)
    # an empty method means every method, as "*"
    stub.InjectError(control_pb2.InjectErrorRequest(code="UNAVAILABLE", times=1), timeout=10)
    assert code_of(api_pb2_grpc.ImageServiceStub(channel).ListImages, pb.ListImagesRequest()) == (
        C.UNAVAILABLE
    )


def test_list_calls_honours_its_limit(channel: grpc.Channel, ctl: RemoteControl, rs) -> None:
    for _ in range(5):
        rs.Version(pb.VersionRequest(), timeout=10)
    rs.Status(pb.StatusRequest(), timeout=10)
    stub = control_pb2_grpc.ControlStub(channel)
    answer = stub.ListCalls(control_pb2.ListCallsRequest(method="Version", limit=2), timeout=10)
    assert [c.method for c in answer.calls] == ["Version", "Version"]
    assert (answer.left_out, answer.waiting) == (3, 0)
    assert len(stub.ListCalls(control_pb2.ListCallsRequest(), timeout=10).calls) == 6


def test_reflection_lists_the_runtime_and_the_control_service(channel: grpc.Channel) -> None:
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {
        "runtime.v1.RuntimeService",
        "runtime.v1.ImageService",
        "grpc.health.v1.Health",
        "crilab.control.v1.Control",
    } <= services


# -- the command line -----------------------------------------------------------------------


def ctl_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crilab.runtime.ctl", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_ctl_steers_serve_while_crictl_drives_it(served: str, ctl: RemoteControl) -> None:
    crictl = find_crictl()
    require(crictl, "crictl not found: set $CRICTL, put ../shared beside the repo, or install it")
    assert crictl is not None
    # (not UNAVAILABLE: crictl retries that one while it checks the connection)
    done = ctl_cli(
        "--endpoint", served, "error", "ListPodSandbox", "PERMISSION_DENIED", "--message", "nope"
    )
    assert (done.returncode, done.stderr) == (0, "")
    pods = [crictl, "--runtime-endpoint", served, "--timeout", "20s", "pods", "-q"]
    failed = subprocess.run(pods, capture_output=True, text=True, timeout=60, check=False)
    assert failed.returncode != 0 and "PermissionDenied desc = nope" in failed.stderr
    worked = subprocess.run(pods, capture_output=True, text=True, timeout=60, check=False)
    assert worked.returncode == 0, worked.stderr  # the fault is used up
    listed = ctl_cli("--endpoint", served, "calls", "--method", "ListPodSandbox", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["code"], r["injected"]) for r in rows] == [
        ("PERMISSION_DENIED", "error"),
        ("OK", ""),
    ]
    text = ctl_cli("--endpoint", served, "calls", "--limit", "1")
    assert text.returncode == 0 and text.stdout.startswith("ListPodSandbox OK ")


def test_ctl_latency_clear_and_reset(served: str, ctl: RemoteControl, rs) -> None:
    done = ctl_cli("--endpoint", served, "latency", "60", "--method", "Version")
    assert done.returncode == 0, done.stderr
    assert code_of(rs.Version, pb.VersionRequest(), timeout=0.5) == C.DEADLINE_EXCEEDED
    assert ctl_cli("--endpoint", served, "clear").returncode == 0
    assert code_of(rs.Version, pb.VersionRequest(), timeout=5) == C.OK
    lognormal = ctl_cli("--endpoint", served, "latency", "--p50", "0.001", "--p99", "0.002")
    assert lognormal.returncode == 0, lognormal.stderr
    rs.Status(pb.StatusRequest(), timeout=10)
    assert ctl.calls_to("Status")[-1].injected.startswith("latency ")
    assert ctl_cli("--endpoint", served, "reset").returncode == 0
    assert ctl.calls() == []


def test_ctl_mistakes_say_what_to_do(served: str, tmp_path: Path) -> None:
    wrong = ctl_cli("--endpoint", served, "error", "startcontainer", "UNAVAILABLE")
    assert wrong.returncode == 2 and "did you mean 'StartContainer'" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    neither = ctl_cli("--endpoint", served, "latency")
    assert neither.returncode == 2 and "give SECONDS" in neither.stderr
    half = ctl_cli("--endpoint", served, "latency", "--p50", "0.01")
    assert half.returncode == 2 and "both --p50 and --p99" in half.stderr
    nobody = ctl_cli("--endpoint", f"unix://{tmp_path}/none.sock", "--timeout", "2", "clear")
    assert nobody.returncode == 1 and "Start one with `crilab serve`" in nobody.stderr
    assert "Traceback" not in nobody.stderr


# -- in-process ---------------------------------------------------------------------------


def test_remote_control_of_an_in_process_runtime() -> None:
    with FakeRuntime() as rt, RemoteControl(rt.endpoint) as ctl:
        ctl.inject_error("Version", "UNAVAILABLE")
        with grpc.insecure_channel(rt.endpoint.replace("unix://", "unix:", 1)) as ch:
            assert code_of(api_pb2_grpc.RuntimeServiceStub(ch).Version, pb.VersionRequest()) == (
                C.UNAVAILABLE
            )
        assert [c.method for c in rt.calls] == ["Version"]  # no control call recorded
        assert [c.code for c in ctl.calls()] == ["UNAVAILABLE"]


def test_a_server_without_the_control_service_is_named() -> None:
    unlike = pytest.raises(RuntimeUnavailable, match="serves no crilab control service")
    with helloworld.serve() as server, RemoteControl(server.endpoint.uri) as ctl, unlike:
        ctl.clear_faults()
