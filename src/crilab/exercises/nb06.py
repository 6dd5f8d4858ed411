"""Exercises of notebook 06 (a mini kubelet): the restart rule and the next attempt number."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import grpc

from ..stubs import api_pb2
from . import Verdict, exercise, right, unanswered, wrong

# --- 06.should-restart: restartPolicy and the exit code -----------------------------------

#: (policy, exit code, restart?, why), in the order the check tries them.
_CASES: tuple[tuple[str, int, bool, str], ...] = (
    ("Always", 1, True, "Always restarts a container whatever its exit code."),
    ("Always", 137, True, "Always restarts a container whatever its exit code, killed too."),
    (
        "Always",
        0,
        True,
        "Always restarts even a container that completed (exit code 0): a Deployment's "
        "containers are meant to run for ever, so ending at all is the problem. (That is why "
        "a Job's pods may not use Always.)",
    ),
    ("OnFailure", 1, True, "OnFailure restarts a container that failed: exit code 1 is failure."),
    (
        "OnFailure",
        137,
        True,
        "137 = 128 + 9, killed by SIGKILL (or by the OOM killer): a failure, so OnFailure "
        "restarts it.",
    ),
    (
        "OnFailure",
        0,
        False,
        "Exit code 0 is success: OnFailure leaves a container that completed alone. That is "
        "how a Job's pod finishes.",
    ),
    (
        "Never",
        1,
        False,
        "Never means never, even after a failure: the container stays EXITED and the pod's "
        "phase becomes Failed.",
    ),
    (
        "Never",
        0,
        False,
        "Never leaves an exited container alone; with exit code 0 the pod Succeeded.",
    ),
)


def _decisions(should_restart: Callable[[str, int], object]) -> list[object]:
    return [should_restart(policy, code) for policy, code, _, _ in _CASES]


def _cannot_take(function: Callable[..., object], *arguments: str) -> str | None:
    """Why ``function`` cannot be called with these arguments (by name), or None if it can."""
    try:
        inspect.signature(function).bind(*arguments)
    except TypeError:
        wanted = ", ".join(arguments)
        return (
            f"Your function cannot be called as the loop calls it, with {len(arguments)} "
            f"arguments ({wanted}): give it exactly those parameters."
        )
    except ValueError:  # no signature to read (a builtin): just call it
        return None
    return None


@exercise(
    "06.should-restart",
    title="Restart, or not?",
    hint=(
        "Three policies, one question each: Always restarts every exited container, "
        "OnFailure only those whose exit code is not 0, Never none."
    ),
    solution='''
        def should_restart(policy, exit_code):
            """Whether the kubelet restarts a container that exited with exit_code."""
            if policy == "Always":
                return True
            if policy == "OnFailure":
                return exit_code != 0
            return False  # "Never"
    ''',
)
def _should_restart(should_restart: object) -> Verdict:
    if isinstance(should_restart, bool):
        return wrong(
            "That is one bool; the answer is the function itself, "
            'check("06.should-restart", should_restart), with no parentheses.'
        )
    if not callable(should_restart):
        return wrong(f"That is a {type(should_restart).__name__}; the answer is a function.")
    if (problem := _cannot_take(should_restart, "policy", "exit_code")) is not None:
        return wrong(problem)
    decisions = _decisions(should_restart)
    if all(d is None for d in decisions):
        return unanswered("Your function returns None: its body is still the placeholder.")
    odd = next((d for d in decisions if not isinstance(d, bool)), None)
    if odd is not None:
        return wrong(
            f"Your function returned {odd!r} (a {type(odd).__name__}); it should return True "
            "(restart) or False (leave it)."
        )
    if all(decisions):
        return wrong(
            "Your function restarts every exited container, whatever the policy: that is "
            "Always, and only Always. Under OnFailure a container that exited 0 is done; "
            "under Never nothing is restarted."
        )
    if not any(decisions):
        return wrong(
            "Your function never restarts anything: that is the policy Never. Always "
            "restarts every exited container, OnFailure those that failed."
        )
    for (policy, code, expected, why), got in zip(_CASES, decisions, strict=True):
        if got != expected:
            said = "restart" if got else "leave it"
            return wrong(f"should_restart({policy!r}, {code}) answered {got} ({said}). {why}")
    return right(
        "All eight cases right. The real kubelet does not restart at once, though: it waits "
        "10 s, then 20 s, 40 s... up to 5 minutes between restarts of a container that keeps "
        "failing (the CrashLoopBackOff that `kubectl get pods` shows), and resets the delay "
        "once a container has run for 10 minutes. Our mini kubelet restarts on the next round."
    )


# --- 06.next-attempt: the attempt number of the next container --------------------------------


def _containers(*spec: tuple[str, int]) -> list[api_pb2.Container]:
    return [
        api_pb2.Container(
            id=f"{index:064x}",
            metadata=api_pb2.ContainerMetadata(name=name, attempt=attempt),
            state=api_pb2.CONTAINER_EXITED,
        )
        for index, (name, attempt) in enumerate(spec, 1)
    ]


def _collision(attempt: int) -> str:
    """What a runtime holding task attempts 2 and 1 answers to CreateContainer(task, attempt)."""
    from ..builders import container_config, pod_config
    from ..client import connect
    from ..runtime.server import FakeRuntime

    config = pod_config("exercise", "crilab", uid="uid-exercise")
    with FakeRuntime(images=["busybox"]) as rt, connect(rt.endpoint) as client:
        pod = client.run_pod_sandbox(config)
        for held in (1, 2):
            client.create_container(pod, container_config("task", "busybox", attempt=held), config)
        try:
            client.create_container(
                pod, container_config("task", "busybox", attempt=attempt), config
            )
        except grpc.RpcError as err:
            return f"{err.code().name}: {err.details()}"
    return "OK"


@exercise(
    "06.next-attempt",
    title="The next attempt number",
    hint=(
        "Take the containers whose metadata.name is `name`; the next attempt is one more "
        "than the highest metadata.attempt among them, or 0 when there are none: "
        "max(..., default=-1) + 1."
    ),
    solution='''
        def next_attempt(containers, name):
            """One more than the highest attempt of the containers called `name`, else 0."""
            attempts = [c.metadata.attempt for c in containers if c.metadata.name == name]
            return max(attempts, default=-1) + 1
    ''',
)
def _next_attempt(next_attempt: object) -> Verdict:
    if isinstance(next_attempt, int):
        return wrong(
            "That is one number; the answer is the function itself, "
            'check("06.next-attempt", next_attempt), with no parentheses.'
        )
    if not callable(next_attempt):
        return wrong(f"That is a {type(next_attempt).__name__}; the answer is a function.")
    if (problem := _cannot_take(next_attempt, "containers", "name")) is not None:
        return wrong(problem)
    cases = [
        ("no container at all", [], 0),
        ("only another container, app (attempt 0)", _containers(("app", 0)), 0),
        ("task attempt 0", _containers(("task", 0)), 1),
        ("task attempts 0 and 1, and app 0", _containers(("task", 0), ("app", 0), ("task", 1)), 2),
    ]
    gc_case = _containers(("task", 2), ("task", 1))
    for what, containers, expected in [*cases, ("task attempts 2 and 1", gc_case, 3)]:
        got = next_attempt(list(containers), "task")
        if got is None:
            return unanswered("Your function returns None: its body is still the placeholder.")
        if isinstance(got, bool) or not isinstance(got, int):
            return wrong(
                f"For {what}, your function returned {got!r} (a {type(got).__name__}); "
                "an attempt is an int."
            )
        if got == expected:
            continue
        if containers is gc_case and got in (1, 2):
            said = _collision(got)
            return wrong(
                f"For a pod holding task attempts 2 and 1, your function says {got}: it counts "
                "the containers. Attempt 0 is gone, as the kubelet's garbage collector removes "
                "old exited containers (it keeps the last one, for `kubectl logs --previous`), "
                f"so counting no longer gives the next number. A fake runtime holding attempts "
                f"2 and 1 answers CreateContainer(task, attempt {got}) with:\n{said}"
                + (
                    ""
                    if got == 2
                    else "\n(and attempt 1 would reuse a number: its log file "
                    "task/1.log would be written twice)"
                )
            )
        has_task = any(c.metadata.name == "task" for c in containers)
        if has_task and got == expected - 1:
            return wrong(
                f"For {what}, your function says {got}: that is the attempt of the newest "
                "container, a number already taken. The new container needs the next one."
            )
        if "app" in what and got > expected:
            return wrong(
                f"For {what}, your function says {got}: it counts app too. Each container of "
                "a pod has its own attempts; look only at those whose metadata.name is `name`."
            )
        return wrong(f"For {what}, your function says {got}; the next attempt is {expected}.")
    return right(
        "Right, whatever was removed. The kubelet does the same: the attempt is the container's "
        "restart count (RESTARTS in `kubectl get pods`), it names the log file "
        "(task/ATTEMPT.log under the pod's log directory), and the runtime reserves each "
        "name and attempt once, so a number is never reused."
    )
