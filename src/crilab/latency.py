"""Measure how long calls take, and plot it.

A mean hides what users feel: the slow tail. ``measure`` records every call's
latency (so percentiles can be read off), counts failures by status code
instead of stopping at the first, and can run calls from several threads at
once to show what concurrency does to throughput and to the tail::

    one = measure(client.version, n=200, label="Version")
    four = measure(client.version, n=200, concurrency=4, label="Version x4")
    compare_table([one, four]); plot_cdf(one, four)

Every plot takes any number of runs, as arguments or as one list (``plot_cdf(a, b, c)`` or
``plot_cdf(runs)``): in-process against ``crilab.spawn_runtime()``, unix against TCP, with
and without injected latency. Each run keeps its colour and its label across the plots.
The plots use matplotlib, imported only when you plot, and return the Figure
(never ``plt.show()``) so notebooks display it and tests can inspect it.
"""

from __future__ import annotations

import contextlib
import html
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc

__all__ = [
    "Samples",
    "compare_table",
    "measure",
    "percentile",
    "plot_cdf",
    "plot_comparison",
    "plot_histogram",
    "plot_timeseries",
]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolating linearly as numpy's default does."""
    if not values:
        raise ValueError("percentile of no values: measure at least one successful call")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be between 0 and 100, not {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Samples:
    """The outcome of ``measure``: one latency per successful call, errors by code.

    ``started`` holds each successful call's start (seconds after the run began),
    in the same order as ``latencies``, for time series. Figures are in seconds;
    ``summary()`` gives milliseconds.
    """

    label: str = ""
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    wall: float = 0.0
    concurrency: int = 1
    started: list[float] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Successful calls (those with a latency)."""
        return len(self.latencies)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def total(self) -> int:
        """All measured calls, successful or not."""
        return self.count + self.error_count

    def _pct(self, q: float) -> float:
        return percentile(self.latencies, q) if self.latencies else math.nan

    @property
    def p50(self) -> float:
        return self._pct(50)

    @property
    def p90(self) -> float:
        return self._pct(90)

    @property
    def p99(self) -> float:
        return self._pct(99)

    @property
    def mean(self) -> float:
        return sum(self.latencies) / len(self.latencies) if self.latencies else math.nan

    @property
    def min(self) -> float:
        return min(self.latencies) if self.latencies else math.nan

    @property
    def max(self) -> float:
        return max(self.latencies) if self.latencies else math.nan

    @property
    def calls_per_second(self) -> float:
        """Throughput: every measured call (failed ones too) over the wall time."""
        return self.total / self.wall if self.wall > 0 else math.nan

    def summary(self) -> dict[str, Any]:
        """One flat row in milliseconds, for tables."""
        return {
            "label": self.label,
            "n": self.count,
            "errors": self.error_count,
            "concurrency": self.concurrency,
            "p50_ms": self.p50 * 1000,
            "p90_ms": self.p90 * 1000,
            "p99_ms": self.p99 * 1000,
            "mean_ms": self.mean * 1000,
            "min_ms": self.min * 1000,
            "max_ms": self.max * 1000,
            "calls_per_s": self.calls_per_second,
            "wall_s": self.wall,
        }

    def _repr_html_(self) -> str:
        return _html_table([self.summary()])

    def __repr__(self) -> str:
        return (
            f"<Samples {self.label or '(no label)'}: n={self.count} errors={self.error_count} "
            f"p50={self.p50 * 1000:.3f}ms p99={self.p99 * 1000:.3f}ms "
            f"{self.calls_per_second:.0f} calls/s>"
        )


# -- measuring ---------------------------------------------------------------------


class _Run:
    """Shared state of one measurement: hands out call slots and collects results."""

    def __init__(self, n: int, progress: Callable[[int, int], None] | None) -> None:
        self.n = n
        self.progress = progress
        self.every = max(1, n // 100)  # at most ~100 progress updates
        self.lock = threading.Lock()
        self.taken = 0
        self.done = 0
        self.results: list[tuple[float, float]] = []  # (started, latency)
        self.errors: dict[str, int] = {}
        self.failed = threading.Event()  # an unexpected exception: stop everyone

    def take(self) -> bool:
        with self.lock:
            if self.taken >= self.n or self.failed.is_set():
                return False
            self.taken += 1
            return True

    def record(self, started: float, latency: float | None, code: str = "") -> None:
        with self.lock:
            if latency is None:
                self.errors[code] = self.errors.get(code, 0) + 1
            else:
                self.results.append((started, latency))
            self.done += 1
            report = self.progress is not None and (
                self.done % self.every == 0 or self.done == self.n
            )
            if report:
                self.progress(self.done, self.n)


def _status_name(err: grpc.RpcError) -> str:
    code = err.code() if callable(getattr(err, "code", None)) else None
    return code.name if isinstance(code, grpc.StatusCode) else type(err).__name__


def _worker(call: Callable[[], object], run: _Run, origin: float) -> None:
    try:
        while run.take():
            start = time.perf_counter()
            try:
                call()
            except grpc.RpcError as err:
                run.record(start - origin, None, _status_name(err))
            else:
                run.record(start - origin, time.perf_counter() - start)
    except BaseException:
        run.failed.set()
        raise


def _warm_up(call: Callable[[], object], times: int) -> None:
    """Open the connection and fill caches first: the first call is never typical."""
    for _ in range(times):
        with contextlib.suppress(grpc.RpcError):
            call()


def measure(
    call: Callable[[], object],
    n: int = 200,
    *,
    concurrency: int = 1,
    warmup: int = 10,
    label: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> Samples:
    """Call ``call()`` ``n`` times in all, from ``concurrency`` threads, timing each.

    A ``grpc.RpcError`` is counted under its status code in ``errors`` and the run
    goes on; any other exception is a bug in ``call`` and is raised.
    ``progress(done, n)`` is called now and then (e.g. to move a progress bar).
    """
    if n < 1 or concurrency < 1:
        raise ValueError("n and concurrency must be at least 1")
    _warm_up(call, warmup)
    run = _Run(n, progress)
    threads = min(concurrency, n)
    origin = time.perf_counter()
    with ThreadPoolExecutor(threads, thread_name_prefix="crilab-measure") as pool:
        futures = [pool.submit(_worker, call, run, origin) for _ in range(threads)]
        for future in futures:
            future.result()  # re-raises a worker's unexpected exception
    wall = time.perf_counter() - origin
    run.results.sort()
    return Samples(
        label=label,
        latencies=[latency for _, latency in run.results],
        errors=dict(run.errors),
        wall=wall,
        concurrency=concurrency,
        started=[started for started, _ in run.results],
    )


# -- tables ------------------------------------------------------------------------


def compare_table(samples_list: Sequence[Samples]) -> list[dict[str, Any]]:
    """One row per Samples; ``ratio_p50`` is each p50 over the first one's."""
    rows = []
    base = samples_list[0].p50 if samples_list else math.nan
    for s in samples_list:
        rows.append(
            {
                "label": s.label,
                "n": s.count,
                "p50_ms": s.p50 * 1000,
                "p90_ms": s.p90 * 1000,
                "p99_ms": s.p99 * 1000,
                "mean_ms": s.mean * 1000,
                "calls_per_s": s.calls_per_second,
                "errors": s.error_count,
                "ratio_p50": s.p50 / base if base and not math.isnan(base) else math.nan,
            }
        )
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return (
            "nan" if math.isnan(value) else f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
        )
    return html.escape(str(value))


def _html_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<table></table>"
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row.values()) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# -- plots -------------------------------------------------------------------------


def _new_axes(title: str, xlabel: str, ylabel: str) -> tuple[Any, Any]:
    """A new figure detached from pyplot's registry: shown once when returned, never twice."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    plt.close(fig)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig, ax


def _runs(given: Sequence[Samples | Sequence[Samples]], what: str) -> list[Samples]:
    """The runs to plot, from ``f(a, b)`` or ``f([a, b])``, with a clear error otherwise."""
    runs: list[Samples] = []
    for item in given:
        if isinstance(item, Samples):
            runs.append(item)
        elif isinstance(item, Sequence) and all(isinstance(x, Samples) for x in item):
            runs.extend(item)
        else:
            raise TypeError(
                f"{what}() plots Samples (what measure() returns), given as arguments or as "
                f"one list; got {type(item).__name__}"
                + (" (give percentiles= by keyword)" if what == "plot_comparison" else "")
            )
    return runs


def _name(s: Samples, index: int) -> str:
    return s.label or f"samples {index + 1}"


def _ms(values: Sequence[float]) -> list[float]:
    return [v * 1000 for v in values]


def plot_histogram(
    *samples: Samples | Sequence[Samples], bins: int = 50, log_x: bool = False
) -> Any:
    """How latencies are spread: one histogram per Samples, on shared bins.

    ``log_x``: bins of equal ratio on a log axis, so a 0.3 ms run and a 5 ms one
    (an injected delay, a separate process) both keep their shape.
    """
    runs = _runs(samples, "plot_histogram")
    fig, ax = _new_axes("Latency distribution", "latency (ms)", "calls")
    every = [v for s in runs for v in _ms(s.latencies)]
    if every:
        low, high = min(every), max(every)
        edges: list[float] | int = bins
        if high > low and log_x and low > 0:
            edges = [low * (high / low) ** (i / bins) for i in range(bins + 1)]
            ax.set_xscale("log")
        elif high > low:
            edges = [low + (high - low) * i / bins for i in range(bins + 1)]
        for i, s in enumerate(runs):
            ax.hist(_ms(s.latencies), bins=edges, alpha=0.5, label=_name(s, i))
        ax.legend()
    return fig


def plot_cdf(*samples: Samples | Sequence[Samples], log_x: bool = False) -> Any:
    """The fraction of calls at or under each latency: percentiles read straight off."""
    runs = _runs(samples, "plot_cdf")
    fig, ax = _new_axes("Latency CDF", "latency (ms)", "fraction of calls ≤ latency")
    for i, s in enumerate(runs):
        xs = sorted(_ms(s.latencies))
        ys = [(k + 1) / len(xs) for k in range(len(xs))]
        ax.step(xs, ys, where="post", label=_name(s, i))
    if log_x:
        ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


def plot_comparison(
    *samples: Samples | Sequence[Samples], percentiles: Sequence[float] = (50, 99)
) -> Any:
    """p50 and p99 side by side: one bar per Samples in each percentile group.

    ``plot_comparison(runs)`` or ``plot_comparison(a, b, c)``; ``percentiles`` by keyword.
    """
    samples_list = _runs(samples, "plot_comparison")
    fig, ax = _new_axes("Latency percentiles", "percentile", "latency (ms)")
    count = max(len(samples_list), 1)
    width = 0.8 / count
    groups = range(len(percentiles))
    for i, s in enumerate(samples_list):
        heights = [s._pct(q) * 1000 for q in percentiles]
        positions = [g - 0.4 + width * (i + 0.5) for g in groups]
        ax.bar(positions, heights, width=width, label=_name(s, i))
    ax.set_xticks(list(groups), [f"p{q:g}" for q in percentiles])
    ax.legend()
    return fig


def plot_timeseries(*samples: Samples | Sequence[Samples]) -> Any:
    """Each call's latency against when it started: warm-up effects and hiccups show."""
    runs = _runs(samples, "plot_timeseries")
    fig, ax = _new_axes("Latency over time", "time since start (s)", "latency (ms)")
    for i, s in enumerate(runs):
        ax.plot(s.started, _ms(s.latencies), marker=".", linestyle="none", label=_name(s, i))
    ax.legend()
    return fig
