"""Exercises of notebook 05 (latency): a percentile by hand, added latency, deadlines."""

from __future__ import annotations

import math
import numbers

import grpc

from ..latency import percentile
from . import Verdict, exercise, right, wrong

# --- 05.p90: a percentile by hand --------------------------------------------------------------

#: The latencies of the exercise, in ms, as the notebook lists them (``latencies_ms``).
LATENCIES_MS = (1.2, 0.9, 1.1, 7.5, 1.0, 1.3, 0.8, 1.1, 2.4, 1.0, 1.2)


def _number(answer: object) -> float | None:
    """The answer as a float, or None when it is not a plain number."""
    if isinstance(answer, bool) or not isinstance(answer, numbers.Real):
        return None
    value = float(answer)
    return None if math.isnan(value) else value


def _near(value: float, target: float, tolerance: float = 0.005) -> bool:
    return abs(value - target) <= tolerance


@exercise(
    "05.p90",
    title="The 90th percentile, by hand",
    hint=(
        "Sort the 11 values. With linear interpolation (numpy's default, and "
        "crilab.latency.percentile's), the p-th percentile sits at position "
        "(n - 1) × p / 100 of the sorted list, counting from 0: here (11 - 1) × 0.9 = 9."
    ),
    solution="""
        ordered = sorted(latencies_ms)  # [0.8, 0.9, 1.0, 1.0, 1.1, 1.1, 1.2, 1.2, 1.3, 2.4, 7.5]
        position = (len(ordered) - 1) * 90 / 100  # 9.0: exactly one value, nothing to interpolate
        p90 = ordered[9]
    """,
)
def _p90(p90: object) -> Verdict:
    if isinstance(p90, str):
        return wrong(f"{p90!r} is text; give the number itself (ms), e.g. 1.5.")
    if isinstance(p90, list | tuple):
        return wrong("That is a list; the answer is one number, the 90th percentile in ms.")
    value = _number(p90)
    if value is None:
        return wrong(f"That is a {type(p90).__name__}; the answer is a number of milliseconds.")
    ordered = sorted(LATENCIES_MS)
    expected = percentile(LATENCIES_MS, 90)
    if _near(value, expected):
        return right(
            f"{expected} ms, the same as crilab.latency.percentile(latencies_ms, 90). Look at "
            "what it leaves out: the slowest call, 7.5 ms, three times slower, does not move "
            "p90 at all. With 11 calls, only the maximum says anything about a 1-in-100 tail; "
            "p99 needs a few hundred calls before it means much, which is why this notebook "
            "measures 300."
        )
    if _near(value, expected / 1000, 0.000005):
        return wrong(
            f"{value} looks like {expected} ms written in seconds. The list is in ms; answer in ms."
        )
    if _near(value, max(ordered)):
        return wrong(
            "7.5 is the maximum, the 100th percentile: every call is at or under it. p90 is "
            "the value that 90% of the calls are at or under, lower down the sorted list."
        )
    if _near(value, percentile(LATENCIES_MS, 50)):
        return wrong(
            "1.1 is the median, p50: half the calls are at or under it. p90 is further up "
            "the sorted list, at position (11 - 1) × 0.9 = 9."
        )
    if _near(value, sum(LATENCIES_MS) / len(LATENCIES_MS), 0.01):
        return wrong(
            f"{value:.2f} is the mean. A mean mixes the one slow call into every other one and "
            "describes no real call; a percentile is a value of the sorted list."
        )
    if _near(value, LATENCIES_MS[9]):
        return wrong(
            "1.0 is the value at position 9 of the list as given, unsorted. Percentiles are "
            "read from the sorted list."
        )
    if _near(value, ordered[8]):
        return wrong(
            "1.3 is one place too low in the sorted list (position 8). Counting from 0, p90 of "
            "11 values is at position (11 - 1) × 0.9 = 9."
        )
    if _near(value, 6.48):
        return wrong(
            "6.48 is the 'exclusive' definition (Excel's PERCENTILE.EXC: position "
            "(n + 1) × p). Several definitions exist; this course uses numpy's default, "
            "linear interpolation at position (n - 1) × p, which crilab.latency.percentile "
            "implements."
        )
    below = sum(v <= value for v in LATENCIES_MS)
    return wrong(
        f"{value} ms: {below} of the 11 calls are at or under it. p90 is the value at position "
        "(11 - 1) × 0.9 = 9 of the sorted list, counting from 0."
    )


# --- 05.ratio: what a fixed delay does to p50 ------------------------------------------------

ADDED = 0.005  # seconds, what the notebook injects


@exercise(
    "05.ratio",
    title="p50 with 5 ms more, over p50 without",
    hint=(
        "The injected 5 ms is added to every call, on top of what it cost before: the new "
        "p50 is about base.p50 + 0.005 (seconds). The ratio is that over base.p50."
    ),
    solution="""
        ratio = (base.p50 + 0.005) / base.p50  # 5 ms added to every call, then compared
    """,
)
def _ratio(ratio: object, base: object) -> Verdict:
    if isinstance(ratio, str):
        return wrong(f"{ratio!r} is text; give the number itself, e.g. 3.0.")
    p50 = getattr(base, "p50", None)
    if not isinstance(p50, float) or math.isnan(p50) or p50 <= 0:
        return wrong(
            "The check needs the baseline measurement as its second argument: "
            'check("05.ratio", ratio, base), where base is the Samples of section 2.'
        )
    value = _number(ratio)
    if value is None:
        return wrong(f"That is a {type(ratio).__name__}; the answer is a number, a ratio.")
    expected = (p50 + ADDED) / p50
    base_ms, new_ms = p50 * 1000, (p50 + ADDED) * 1000
    if 0.75 * expected <= value <= 1.3 * expected:
        return right(
            f"About {expected:.0f}: {base_ms:.2f} ms became about {new_ms:.2f} ms. Latency adds, "
            "it does not multiply: the same 5 ms would barely show on a call that takes 100 ms "
            "(ratio 1.05), and dwarfs a local call. That is why a chatty protocol suffers most "
            "from a slow link, and why the kubelet talks to its runtime over a local socket."
        )
    if value < 1:
        return wrong(
            f"{value:g} is below 1: p50 would have dropped. The ratio is the new p50 over the "
            "old one, and adding a delay to every call can only raise it."
        )
    if _near(value, 5, 0.01):
        return wrong(
            "5 is the number of milliseconds added, not a ratio. Divide the new p50 (the old "
            f"one, {base_ms:.2f} ms, plus 5 ms) by the old one."
        )
    if _near(value, ADDED / p50, 0.05 * ADDED / p50):
        return wrong(
            f"{value:.1f} is 5 ms over the old p50: the delay alone. The new p50 is the old "
            f"one plus the delay, {new_ms:.2f} ms; divide that by {base_ms:.2f} ms."
        )
    if value < 0.75 * expected:
        return wrong(
            f"A ratio of {value:g} means p50 would become {base_ms * value:.2f} ms. But every "
            f"call now waits 5 ms more than its {base_ms:.2f} ms: about {new_ms:.2f} ms. A local "
            "call is much shorter than 5 ms."
        )
    return wrong(
        f"A ratio of {value:g} means p50 would become {base_ms * value:.1f} ms, more than the "
        f"{base_ms:.2f} ms it was plus the 5 ms added ({new_ms:.2f} ms). A fixed delay adds to "
        "each call; it does not multiply it."
    )


# --- 05.deadline-code: the status of a call whose deadline passes --------------------------

_OTHERS = {
    "CANCELLED": (
        "CANCELLED ends a call that was cancelled, usually by the client on purpose (closing a "
        "GetContainerEvents stream, interrupting the kernel). A passing deadline has a code "
        "of its own."
    ),
    "UNAVAILABLE": (
        "UNAVAILABLE means the server could not be reached (or the connection broke): the "
        "kubelet sees it while containerd restarts. Here the server is up and working, only "
        "slowly."
    ),
    "ABORTED": (
        "ABORTED is a server's answer to a conflict (e.g. a concurrent change), not a clock "
        "that ran out."
    ),
    "RESOURCE_EXHAUSTED": (
        "RESOURCE_EXHAUSTED means a limit was hit: a quota, or a message larger than the "
        "receiver accepts. Time is not one of those limits."
    ),
    "UNKNOWN": (
        "UNKNOWN is what a server answers when it has no better code for its error (containerd "
        "uses it a lot). A passing deadline is not the server's error: the client's clock decides."
    ),
    "INTERNAL": "INTERNAL reports a broken invariant in the server or the library, not time.",
    "OK": "OK is a call that finished in time. This one cannot: the runtime waits longer.",
}


def _status_name(answer: object) -> str | None:
    if isinstance(answer, grpc.StatusCode):
        return answer.name
    if isinstance(answer, str):
        text = answer.strip().upper()
        for code in grpc.StatusCode:
            camel = "".join(part.capitalize() for part in code.name.split("_")).upper()
            if text in (code.name, code.name.replace("_", " "), camel):
                return code.name
    return None


@exercise(
    "05.deadline-code",
    title="The status code of a deadline that passes",
    hint=(
        "Notebook 01 made a deadline fire (section 10). The code's name says it; "
        "answer with grpc.StatusCode.SOMETHING."
    ),
    solution="""
        deadline_code = grpc.StatusCode.DEADLINE_EXCEEDED
    """,
)
def _deadline_code(deadline_code: object) -> Verdict:
    if isinstance(deadline_code, int) and not isinstance(deadline_code, bool):
        return wrong(
            f"{deadline_code} is a number; in Python, gRPC codes are grpc.StatusCode members "
            "(the number is only on the wire). Answer with grpc.StatusCode.SOMETHING."
        )
    name = _status_name(deadline_code)
    if name is None:
        return wrong(
            f"{deadline_code!r} is not a status code. Answer with grpc.StatusCode.SOMETHING "
            "(err.code() of the failed call would give it)."
        )
    if name == "DEADLINE_EXCEEDED":
        return right(
            "DEADLINE_EXCEEDED (code 4; crictl prints DeadlineExceeded). The client's library "
            "ends the call when its deadline passes, whatever the server is doing, and the "
            "deadline travelled with the call (the grpc-timeout header), so the server can "
            "give up too; the next cells show what happens when it does not check. The "
            "kubelet's deadline on most CRI calls is --runtime-request-timeout, 2 minutes."
        )
    return wrong(
        _OTHERS.get(name, f"{name} is about something else than time running out.")
        + " Which code names a deadline?"
    )
