"""Exercises of notebook 04 (the pod lifecycle): states, exit codes, the kubelet's sequence."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from ..stubs import api_pb2
from . import Verdict, exercise, right, wrong

# --- 04.stopped-state: the state after StopContainer -----------------------------------------

_EXITED = api_pb2.CONTAINER_EXITED


def _container_state(answer: object) -> int | str:
    """An int ContainerState, or the normalized text of an answer that is not one."""
    if isinstance(answer, bool):
        return repr(answer)
    if isinstance(answer, int):
        return answer
    if isinstance(answer, str):
        text = answer.strip().upper().replace("-", "_").replace(" ", "_")
        for name, number in api_pb2.ContainerState.items():
            if text in (name, name.removeprefix("CONTAINER_")):
                return number
        return text
    return type(answer).__name__


@exercise(
    "04.stopped-state",
    title="A container's state after StopContainer",
    hint=(
        "Look at the table printed after the StopContainer cell, or ask the runtime: "
        "client.container_status(cid).state is a number; api_pb2.ContainerState.Name() "
        "turns it into a name. Answer with the value (api_pb2.CONTAINER_...) or its name."
    ),
    solution="""
        stopped_state = api_pb2.CONTAINER_EXITED
    """,
)
def _stopped_state(stopped_state: object) -> Verdict:
    if hasattr(stopped_state, "DESCRIPTOR") and hasattr(stopped_state, "state"):
        return wrong(
            f"That is a whole {type(stopped_state).__name__} message; the answer is its "
            ".state field (or that state's name)."
        )
    state = _container_state(stopped_state)
    if state == _EXITED:
        return right(
            "CONTAINER_EXITED, with its exit code and reason kept in ContainerStatus. A "
            "container never leaves EXITED: there is no restart in the CRI. When a pod's "
            "container restarts, the kubelet creates a new one with metadata.attempt + 1, "
            "and keeps the last exited one for `kubectl logs --previous`."
        )
    if state == api_pb2.CONTAINER_CREATED:
        return wrong(
            "CONTAINER_CREATED is where a container starts, before StartContainer. States only "
            "move forward: a stopped container never becomes CREATED again (StopContainer on a "
            "CREATED container is OK and changes nothing, but `app` was running)."
        )
    if state == api_pb2.CONTAINER_RUNNING:
        return wrong(
            "StopContainer does not return while the process still runs: it sends the stop "
            "signal, waits up to the grace period, kills if needed, and answers once the "
            "process is gone. So the container is no longer RUNNING."
        )
    if state == api_pb2.CONTAINER_UNKNOWN:
        return wrong(
            "CONTAINER_UNKNOWN means the runtime lost track of the process (e.g. after a crash "
            "of its own). A clean StopContainer leaves a well-known state."
        )
    if state in ("REMOVED", "DELETED", "GONE"):
        return wrong(
            "Stopping does not remove: the container stays, with its exit code and logs, until "
            "RemoveContainer. (REMOVED in the diagram is not a CRI state: a removed container "
            "no longer exists, and ContainerStatus answers NOT_FOUND.)"
        )
    if state in ("STOPPED", "TERMINATED", "DEAD", "KILLED"):
        return wrong(
            f"The CRI has no {state} state (Kubernetes shows 'Terminated' in a pod's status, "
            "computed from this one). Its container states are "
            f"{', '.join(api_pb2.ContainerState.keys())}."
        )
    if state in ("SANDBOX_NOTREADY", "NOTREADY", "SANDBOX_READY", "READY"):
        return wrong(
            f"{state} is a pod sandbox state (PodSandboxState). The question is about the "
            "container: a ContainerState."
        )
    if isinstance(state, int):
        return wrong(
            f"{state} is not a ContainerState value; the values are "
            + ", ".join(f"{n} = {v}" for n, v in api_pb2.ContainerState.items())
            + "."
        )
    return wrong(
        f"{stopped_state!r} is not a container state. The CRI's are "
        f"{', '.join(api_pb2.ContainerState.keys())}."
    )


# --- 04.killed-exit-code: what a killed container reports ------------------------------------


@exercise(
    "04.killed-exit-code",
    title="The exit code of a killed container",
    hint=(
        "A process killed by signal N is reported the way a shell reports it: 128 + N. "
        "StopContainer with timeout_seconds=0 sends SIGKILL, signal 9."
    ),
    solution="""
        killed_exit_code = 137
    """,
)
def _killed_exit_code(killed_exit_code: object) -> Verdict:
    code = killed_exit_code
    if isinstance(code, str) and code.strip().lstrip("-").isdigit():
        return wrong(f"{code!r} is text; give the number itself, an int.")
    if isinstance(code, bool) or not isinstance(code, int):
        return wrong(f"{code!r} is a {type(code).__name__}; the answer is an int, the exit code.")
    if code == 137:
        return right(
            "137 = 128 + 9: killed by SIGKILL, reason 'Error'. With a grace period the runtime "
            "sends SIGTERM first; a shell or `sleep` running as PID 1 ignores it, so it is "
            "still killed at the end, 137. A process that honours SIGTERM and exits cleanly "
            "reports 0 ('Completed'). When the kernel's OOM killer does the killing, it is 137 "
            "too, but the reason says OOMKilled."
        )
    if code == 9:
        return wrong(
            "9 is the signal, SIGKILL. The exit code a runtime reports for a process killed by "
            "a signal follows the shell's convention: 128 + the signal number."
        )
    if code == -9:
        return wrong(
            "-9 is how Python's subprocess reports 'killed by signal 9'. The CRI uses the "
            "shell's convention instead: 128 + the signal number."
        )
    if code == 143:
        return wrong(
            "143 = 128 + 15, SIGTERM: the polite signal a runtime sends first when there is a "
            "grace period. With timeout_seconds=0 there is none: it sends SIGKILL, signal 9."
        )
    if code == 0:
        return wrong(
            "0 means the process ended by itself, successfully (reason 'Completed'): the "
            "one-shot `echo` container does that. A killed process did not get to exit."
        )
    if code in (1, 2, 3, 127, 126):
        return wrong(
            f"{code} is a code a process chooses when it exits by itself (a shell's `exit "
            f"{code}`; 126/127 mean 'cannot execute' / 'command not found'). A killed process "
            "does not choose: the runtime reports 128 + the signal number."
        )
    return wrong(
        f"{code} is not it. A process killed by signal N is reported as 128 + N; which signal "
        "does StopContainer send when the grace period is 0?"
    )


# --- 04.start-sequence: the kubelet's calls to start a container in a new pod ----------------

#: Calls that help start a container (reads are harmless; the kubelet makes some of them too).
_USEFUL = {
    "Version", "Status", "RunPodSandbox", "PodSandboxStatus", "ListPodSandbox", "ImageStatus",
    "ListImages", "PullImage", "CreateContainer", "StartContainer", "ContainerStatus",
    "ListContainers",
}  # fmt: skip

_WHAT_IT_DOES = {
    "StopContainer": "stops a running container",
    "RemoveContainer": "removes a container",
    "StopPodSandbox": "stops the pod, killing its running containers",
    "RemovePodSandbox": "removes the pod and its containers",
    "ExecSync": "runs a command inside a container that already runs",
    "RemoveImage": "removes an image",
}

_IMAGE = "busybox"


def _cri_methods() -> set[str]:
    return {m.name for s in api_pb2.DESCRIPTOR.services_by_name.values() for m in s.methods}


def _play(names: list[str]) -> tuple[list[str], str | None, str | None]:
    """Make the calls on a private fake runtime that does not have the image yet.

    Returns (the log of calls, the state of the last container or None, the first failure).
    """
    from ..builders import container_config, pod_config
    from ..client import connect
    from ..runtime.server import FakeRuntime

    config = pod_config("exercise", "crilab", uid="uid-exercise")
    ids: dict[str, str] = {}
    log: list[str] = []
    with FakeRuntime() as rt, connect(rt.endpoint) as client:

        def image_status() -> str:
            return "the image is there" if client.image_status(_IMAGE) else "no image"

        calls: dict[str, Callable[[], object]] = {
            "Version": client.version,
            "Status": client.status,
            "RunPodSandbox": lambda: ids.__setitem__("pod", client.run_pod_sandbox(config)),
            "PodSandboxStatus": lambda: client.pod_sandbox_status(ids.get("pod", "")),
            "ListPodSandbox": client.list_pod_sandbox,
            "ImageStatus": image_status,
            "ListImages": client.list_images,
            "PullImage": lambda: client.pull_image(_IMAGE, config if "pod" in ids else None),
            "CreateContainer": lambda: ids.__setitem__(
                "container",
                client.create_container(
                    ids.get("pod", ""),
                    container_config("app", _IMAGE, ["sleep", "3600"]),
                    config,
                ),
            ),
            "StartContainer": lambda: client.start_container(ids.get("container", "")),
            "ContainerStatus": lambda: client.container_status(ids.get("container", "")),
            "ListContainers": client.list_containers,
        }
        for step, name in enumerate(names, 1):
            try:
                said = calls[name]()
            except grpc.RpcError as err:
                failure = f"{step}. {name}: {err.code().name}: {err.details()}"
                return log, None, failure
            log.append(f"{step}. {name}: OK" + (f" ({said})" if isinstance(said, str) else ""))
        state = None
        if "container" in ids:
            state = api_pb2.ContainerState.Name(client.container_status(ids["container"]).state)
        return log, state, None


def _why(failure: str, names: list[str], position: int) -> str:
    """A sentence on why the kubelet's order avoids this failure."""
    before = names[: position - 1]
    name = names[position - 1]
    if name == "CreateContainer" and "RunPodSandbox" not in before:
        return (
            "A container is always created in a pod: RunPodSandbox comes first and returns "
            "the pod ID that CreateContainer needs."
        )
    if name == "CreateContainer" and "image" in failure.lower():
        return (
            "This node does not have the image yet, so CreateContainer cannot find it. The "
            "kubelet's default for an image tagged other than :latest (imagePullPolicy: "
            "IfNotPresent) asks ImageStatus, then calls PullImage when the answer is 'no image'."
        )
    if name == "StartContainer" and "CreateContainer" not in before:
        return "StartContainer starts a container that CreateContainer made: it needs its ID."
    if name == "RunPodSandbox" and before.count("RunPodSandbox"):
        return "The same pod twice: the runtime reserves a pod's name, one sandbox per pod."
    if name == "StartContainer":
        return "A container starts once; a second StartContainer is refused."
    if name == "CreateContainer":
        return "A container's name is reserved in its pod: one CreateContainer per container."
    return ""


@exercise(
    "04.start-sequence",
    title="The calls that start a container in a new pod",
    hint=(
        "Five calls, as section 1 made them: the pod, then the image the kubelet's way "
        "(IfNotPresent: ask first, pull only if missing), then the container in two steps. "
        "Write their method names as str, e.g. ['RunPodSandbox', ...]."
    ),
    solution="""
        start_sequence = [
            "RunPodSandbox",
            "ImageStatus",
            "PullImage",
            "CreateContainer",
            "StartContainer",
        ]
    """,
)
def _start_sequence(start_sequence: object) -> Verdict:
    if isinstance(start_sequence, str):
        return wrong(
            f"{start_sequence!r} is one str; the answer is a list of method names, in order."
        )
    if not isinstance(start_sequence, list | tuple):
        return wrong(
            f"That is a {type(start_sequence).__name__}; the answer is a list of method names "
            "in the order the calls are made (a set has no order)."
        )
    if not all(isinstance(name, str) for name in start_sequence):
        kinds = sorted({type(name).__name__ for name in start_sequence})
        return wrong(f"The list holds {', '.join(kinds)}; it should hold str (method names).")
    names = [name.strip().rsplit("/", 1)[-1] for name in start_sequence]
    if not names:
        return wrong("The list is empty: which call makes the pod?")
    unknown = [n for n in names if n not in _cri_methods()]
    if unknown:
        return wrong(
            f"{', '.join(map(repr, unknown))}: not a CRI method (names as in the .proto, e.g. "
            "'RunPodSandbox', with capitals; notebook 03 lists them all)."
        )
    extra = [n for n in names if n not in _USEFUL]
    if extra:
        first = extra[0]
        does = _WHAT_IT_DOES.get(first, "does not help start a container")
        return wrong(
            f"{first} {does}: it does not belong in the calls that start a container in a new pod."
        )
    log, state, failure = _play(names)
    ran = "\n".join(log)
    if failure is not None:
        position = len(log) + 1
        why = _why(failure, names, position)
        lines = ["Your calls, made on a fresh fake runtime that has no image yet:", ran, failure]
        return wrong("\n".join(line for line in [*lines, why] if line))
    if state is None:
        return wrong(
            f"Your calls ran without error:\n{ran}\nbut no container exists at the end. "
            "CreateContainer makes one in the pod."
        )
    if state != "CONTAINER_RUNNING":
        return wrong(
            f"Your calls ran without error:\n{ran}\nbut the container is {state}: "
            "CreateContainer only prepares it; another call runs its process."
        )
    pulled_at = names.index("PullImage") if "PullImage" in names else len(names)
    if "ImageStatus" not in names[:pulled_at]:
        return wrong(
            f"Your calls ran and the container runs:\n{ran}\nbut PullImage is made without "
            "asking first: that is imagePullPolicy: Always, a registry round trip for every "
            "container (the default only for an image tagged :latest, or not tagged at all). "
            "For any other tag the default is IfNotPresent: ask ImageStatus first, and pull "
            "only when the image is missing."
        )
    image_calls = (names.index(n) for n in ("ImageStatus", "PullImage") if n in names)
    image_step = min(image_calls, default=len(names))
    if image_step < names.index("RunPodSandbox"):
        return wrong(
            f"Your calls ran and the container runs:\n{ran}\nbut not in the kubelet's order: "
            "the image comes before the pod. The kubelet makes the pod first (RunPodSandbox), "
            "then, for each of its containers, the image (ImageStatus, then PullImage if "
            "missing), CreateContainer and StartContainer. PullImage carries the pod's "
            "sandbox_config, which exists only once the pod does."
        )
    return right(
        f"Your calls, made on a fresh fake runtime without the image, left a RUNNING "
        f"container:\n{ran}\nFor the next pod with the same image, ImageStatus finds it and "
        "PullImage is skipped. The kubelet also reads PodSandboxStatus after RunPodSandbox, "
        "to learn the pod's IP."
    )
