"""One scenario, two runtimes: the fake must answer as a real containerd does.

The scenario runs against ``../shared/containerd/containerd-ref`` (containerd 1.6 with two local
images, host-network pods only, never a pull) and against the fake, and compares what each step
observed: status codes, states, exit codes, reasons, output. Where containerd answers UNKNOWN for
a caller's mistake, the fake deliberately answers the precise code (docs/behaviour.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from crilab import FakeRuntime
from crilab.builders import container_config, pod_config
from crilab.stubs import api_pb2 as pb
from crilab.stubs import api_pb2_grpc

pytestmark = pytest.mark.timeout(240)

BUSYBOX = "localhost/crilab/busybox:local"

#: step -> (containerd's code, the fake's code): the deliberate differences.
PRECISE_INSTEAD_OF_UNKNOWN = {
    "run pod again with the same metadata": ("UNKNOWN", "ALREADY_EXISTS"),
    "start a running container": ("UNKNOWN", "FAILED_PRECONDITION"),
    "exec in a created container": ("UNKNOWN", "FAILED_PRECONDITION"),
    "run pod with an unknown runtime handler": ("UNKNOWN", "NOT_FOUND"),
    "start a program that does not exist": ("UNKNOWN", "FAILED_PRECONDITION"),
    "exec in an exited container": ("UNKNOWN", "FAILED_PRECONDITION"),
    "reopen the log of an exited container": ("UNKNOWN", "FAILED_PRECONDITION"),
    "start in a stopped pod": ("UNKNOWN", "FAILED_PRECONDITION"),
}


def _code(call: Callable[[], object]) -> tuple[str, object]:
    try:
        return "OK", call()
    except grpc.RpcError as err:
        return err.code().name, err.details()


def _within(future: grpc.Future, seconds: float, what: str) -> object:
    try:
        return future.result(timeout=seconds)
    except grpc.FutureTimeoutError:
        future.cancel()
        raise AssertionError(f"{what} (no answer within {seconds} s)") from None


def scenario(target: str, tmp: Path) -> dict[str, tuple]:
    """Drive one runtime through a lifecycle and its mistakes; return what each step saw."""
    channel = grpc.insecure_channel(target)
    rs = api_pb2_grpc.RuntimeServiceStub(channel)
    ims = api_pb2_grpc.ImageServiceStub(channel)
    seen: dict[str, tuple] = {}
    t = {"timeout": 30}

    def step(name: str, call: Callable[[], object], keep: Callable[[object], object] | None = None):
        code, value = _code(call)
        seen[name] = (code, keep(value) if keep and code == "OK" else None)
        return value

    def status(cid: str) -> pb.ContainerStatus:
        return rs.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), **t).status

    def wait_exit(cid: str) -> tuple[str, int, str]:
        deadline = time.monotonic() + 20
        while (st := status(cid)).state != pb.CONTAINER_EXITED and time.monotonic() < deadline:
            time.sleep(0.05)
        return pb.ContainerState.Name(st.state), st.exit_code, st.reason

    def state_of(cid: str) -> tuple[str, int, str]:
        st = status(cid)
        return pb.ContainerState.Name(st.state), st.exit_code, st.reason

    logs = str(tmp / "logs")
    cfg = pod_config("cmp", "crilab", uid="uid-cmp", host_network=True, log_directory=logs)

    def ctr(name: str, *command: str) -> pb.CreateContainerRequest:
        return pb.CreateContainerRequest(
            pod_sandbox_id=pod, config=container_config(name, BUSYBOX, command), sandbox_config=cfg
        )

    step(
        "version",
        lambda: rs.Version(pb.VersionRequest(version="v1"), **t),
        lambda r: r.runtime_api_version,
    )
    pod = rs.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), **t).pod_sandbox_id
    step(
        "pod status",
        lambda: rs.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod), **t),
        lambda r: r.status.state,
    )
    step(
        "run pod again with the same metadata",
        lambda: rs.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), **t),
    )
    other = pod_config("other", "crilab", uid="uid-other", host_network=True, log_directory=logs)
    step(
        "run pod with an unknown runtime handler",
        lambda: rs.RunPodSandbox(
            pb.RunPodSandboxRequest(config=other, runtime_handler="kata-nonexistent"), **t
        ),
    )
    other.metadata.uid = "uid-runc"  # another pod, whatever the first attempt did
    runc = step(
        "run pod with the runc handler",
        lambda: rs.RunPodSandbox(
            pb.RunPodSandboxRequest(config=other, runtime_handler="runc"), **t
        ),
    )
    if seen["run pod with the runc handler"][0] == "OK":
        rs.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=runc.pod_sandbox_id), **t)
    step(
        "create with a missing image",
        lambda: rs.CreateContainer(
            pb.CreateContainerRequest(
                pod_sandbox_id=pod,
                config=container_config("x", "localhost/crilab/nope:1"),
                sandbox_config=cfg,
            ),
            **t,
        ),
    )
    long = rs.CreateContainer(ctr("long", "sh", "-c", "sleep 3600"), **t).container_id
    seen["created state"] = ("OK", state_of(long))
    step(
        "exec in a created container",
        lambda: rs.ExecSync(
            pb.ExecSyncRequest(container_id=long, cmd=["echo", "hi"], timeout=10), **t
        ),
    )
    rs.StartContainer(pb.StartContainerRequest(container_id=long), **t)
    seen["running state"] = ("OK", state_of(long)[0])
    step(
        "start a running container",
        lambda: rs.StartContainer(pb.StartContainerRequest(container_id=long), **t),
    )
    step(
        "exec echo",
        lambda: rs.ExecSync(
            pb.ExecSyncRequest(container_id=long, cmd=["echo", "hi"], timeout=10), **t
        ),
        lambda r: (r.stdout, r.stderr, r.exit_code),
    )
    step(
        "exec HOME",
        lambda: rs.ExecSync(
            pb.ExecSyncRequest(container_id=long, cmd=["sh", "-c", "echo $HOME"], timeout=10), **t
        ),
        lambda r: r.stdout,
    )
    step(
        "exec failing",
        lambda: rs.ExecSync(
            pb.ExecSyncRequest(
                container_id=long, cmd=["sh", "-c", "echo err >&2; exit 3"], timeout=10
            ),
            **t,
        ),
        lambda r: (r.stdout, r.stderr, r.exit_code),
    )
    ghost = rs.CreateContainer(ctr("ghost", "nosuchbinary"), **t).container_id
    step(
        "start a program that does not exist",
        lambda: rs.StartContainer(pb.StartContainerRequest(container_id=ghost), **t),
    )
    seen["a program that does not exist"] = ("OK", state_of(ghost))
    victim = rs.CreateContainer(ctr("victim", "sleep", "3600"), **t).container_id
    rs.StartContainer(pb.StartContainerRequest(container_id=victim), **t)
    exec_call = rs.ExecSync.future(
        pb.ExecSyncRequest(
            container_id=victim, cmd=["sh", "-c", "echo before; sleep 30; echo after"], timeout=60
        ),
        timeout=60,
    )
    time.sleep(2)  # the exec runs (it sleeps 30 s) ...
    rs.StopContainer(pb.StopContainerRequest(container_id=victim, timeout=0), **t)
    step(  # ... and dies with its container: its output so far, exit 137
        "exec killed with its container",
        lambda: _within(exec_call, 20, "the exec outlived its container"),
        lambda r: (r.stdout, r.stderr, r.exit_code),
    )
    step(
        "exec in an exited container",
        lambda: rs.ExecSync(pb.ExecSyncRequest(container_id=victim, cmd=["true"], timeout=5), **t),
    )
    step(
        "reopen the log of an exited container",
        lambda: rs.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=victim), **t),
    )
    step(
        "update resources of an exited container",
        lambda: rs.UpdateContainerResources(
            pb.UpdateContainerResourcesRequest(
                container_id=victim, linux=pb.LinuxContainerResources(cpu_shares=512)
            ),
            **t,
        ),
    )
    done = rs.CreateContainer(ctr("done", "echo", "done"), **t).container_id
    fails = rs.CreateContainer(ctr("fails", "sh", "-c", "exit 3"), **t).container_id
    waits = rs.CreateContainer(ctr("waits", "sleep", "3600"), **t).container_id
    for cid in (done, fails):
        rs.StartContainer(pb.StartContainerRequest(container_id=cid), **t)
    seen["exit 0"] = ("OK", wait_exit(done))
    seen["exit 3"] = ("OK", wait_exit(fails))
    step(
        "stop a created container",
        lambda: rs.StopContainer(pb.StopContainerRequest(container_id=waits, timeout=0), **t),
    )
    seen["created after stop"] = ("OK", state_of(waits))
    step(
        "stop with a grace period",
        lambda: rs.StopContainer(pb.StopContainerRequest(container_id=long, timeout=1), **t),
    )
    seen["killed"] = ("OK", state_of(long))
    shared = ctr("shared", "sh", "-c", "sleep 3600")
    shared.config.linux.security_context.namespace_options.pid = pb.POD
    shared_id = rs.CreateContainer(shared, **t).container_id
    rs.StartContainer(pb.StartContainerRequest(container_id=shared_id), **t)
    step(
        "stop in a shared PID namespace",
        lambda: rs.StopContainer(pb.StopContainerRequest(container_id=shared_id, timeout=10), **t),
    )
    seen["terminated, not PID 1"] = ("OK", state_of(shared_id))
    step(
        "stop an exited container",
        lambda: rs.StopContainer(pb.StopContainerRequest(container_id=long, timeout=0), **t),
    )
    step(
        "start an unknown container",
        lambda: rs.StartContainer(pb.StartContainerRequest(container_id="0" * 64), **t),
    )
    step(
        "status of an unknown container",
        lambda: rs.ContainerStatus(pb.ContainerStatusRequest(container_id="0" * 64), **t),
    )
    step(
        "remove an unknown container",
        lambda: rs.RemoveContainer(pb.RemoveContainerRequest(container_id="0" * 64), **t),
    )
    step(
        "label filter with no match",
        lambda: rs.ListContainers(
            pb.ListContainersRequest(filter=pb.ContainerFilter(label_selector={"no": "match"})), **t
        ),
        lambda r: len(r.containers),
    )
    step(
        "remove a container",
        lambda: rs.RemoveContainer(pb.RemoveContainerRequest(container_id=done), **t),
    )
    step(
        "status of a removed container",
        lambda: rs.ContainerStatus(pb.ContainerStatusRequest(container_id=done), **t),
    )
    step("stop pod", lambda: rs.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), **t))
    step(
        "stop pod twice",
        lambda: rs.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), **t),
    )
    step(
        "stopped pod status",
        lambda: rs.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod), **t),
        lambda r: r.status.state,
    )
    seen["created container in stopped pod"] = ("OK", state_of(waits))
    step(
        "start in a stopped pod",
        lambda: rs.StartContainer(pb.StartContainerRequest(container_id=waits), **t),
    )
    step("create in a stopped pod", lambda: rs.CreateContainer(ctr("late", "true"), **t))
    step(
        "remove pod",
        lambda: rs.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), **t),
    )
    step(
        "removed pod status",
        lambda: rs.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod), **t),
    )
    step(
        "its containers are gone",
        lambda: rs.ContainerStatus(pb.ContainerStatusRequest(container_id=waits), **t),
    )
    step(
        "remove pod twice",
        lambda: rs.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), **t),
    )
    step(
        "status of a missing image",
        lambda: ims.ImageStatus(
            pb.ImageStatusRequest(image=pb.ImageSpec(image="localhost/crilab/nope:1")), **t
        ),
        lambda r: r.HasField("image"),
    )
    step(
        "remove a missing image",
        lambda: ims.RemoveImage(
            pb.RemoveImageRequest(image=pb.ImageSpec(image="localhost/crilab/nope:1")), **t
        ),
    )
    step(
        "status of a present image",
        lambda: ims.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=BUSYBOX)), **t),
        lambda r: BUSYBOX in r.image.repo_tags,
    )
    channel.close()
    return seen


def test_the_fake_answers_like_containerd(containerd: str, tmp_path: Path) -> None:
    real = scenario(containerd.replace("unix://", "unix:", 1), tmp_path / "real")
    with FakeRuntime(images=[BUSYBOX]) as rt:
        fake = scenario(rt.endpoint.replace("unix://", "unix:", 1), tmp_path / "fake")
    assert list(real) == list(fake)
    differences = []
    for name, (real_code, real_value) in real.items():
        fake_code, fake_value = fake[name]
        if name in PRECISE_INSTEAD_OF_UNKNOWN:
            expected = PRECISE_INSTEAD_OF_UNKNOWN[name]
            if (real_code, fake_code) != expected:
                differences.append(
                    f"{name}: containerd {real_code}, fake {fake_code}, documented {expected}"
                )
            continue
        if (real_code, real_value) != (fake_code, fake_value):
            differences.append(
                f"{name}: containerd {real_code} {real_value!r}, fake {fake_code} {fake_value!r}"
            )
    assert not differences, "\n".join(differences)
