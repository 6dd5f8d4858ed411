"""measure() against a real FakeRuntime, and what the plots actually draw."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import grpc
import matplotlib
import pytest

from crilab import FakeRuntime
from crilab.client import Client, connect
from crilab.latency import (
    Samples,
    compare_table,
    measure,
    percentile,
    plot_cdf,
    plot_comparison,
    plot_histogram,
    plot_timeseries,
)

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def rt() -> Iterator[FakeRuntime]:
    with FakeRuntime() as runtime:
        yield runtime


@pytest.fixture(scope="module")
def client(rt: FakeRuntime) -> Iterator[Client]:
    with connect(rt.endpoint) as c:
        yield c


@pytest.fixture(scope="module")
def runs(client: Client) -> list[Samples]:
    return [
        measure(client.version, n=50, warmup=2, label="Version x1"),
        measure(client.version, n=50, concurrency=4, warmup=2, label="Version x4"),
    ]


def test_percentile() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 90) == pytest.approx(9.0)
    assert percentile([5.0], 99) == 5.0
    assert percentile(list(range(101)), 0) == 0 and percentile(list(range(101)), 100) == 100
    with pytest.raises(ValueError):
        percentile([], 50)


@pytest.mark.parametrize("index", [0, 1])
def test_measure_version(runs: list[Samples], index: int) -> None:
    s = runs[index]
    assert s.concurrency == (1, 4)[index]
    assert s.count == len(s.latencies) == len(s.started) == 50
    assert s.errors == {}
    assert all(x > 0 for x in s.latencies)
    assert s.started == sorted(s.started)
    assert s.min <= s.p50 <= s.p90 <= s.p99 <= s.max
    assert s.wall > 0 and s.calls_per_second > 0
    row = s.summary()
    assert row["label"] == s.label and row["n"] == 50
    assert row["p50_ms"] == pytest.approx(s.p50 * 1000)
    assert "<table>" in s._repr_html_() and s.label in s._repr_html_()


def test_errors_are_counted_not_raised(rt: FakeRuntime, client: Client) -> None:
    rt.inject_error("Version", "UNAVAILABLE", "injected", times=3)
    seen: list[tuple[int, int]] = []
    s = measure(client.version, n=20, warmup=0, progress=lambda d, n: seen.append((d, n)))
    assert s.errors == {"UNAVAILABLE": 3}
    assert s.count == 17 and s.total == 20
    assert seen[-1] == (20, 20)


def test_other_exceptions_are_raised() -> None:
    def broken() -> None:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        measure(broken, n=5, warmup=0, concurrency=2)


def test_compare_table(runs: list[Samples]) -> None:
    rows = compare_table(runs)
    assert [r["label"] for r in rows] == ["Version x1", "Version x4"]
    assert rows[0]["ratio_p50"] == 1.0
    assert rows[1]["ratio_p50"] == pytest.approx(runs[1].p50 / runs[0].p50)
    assert set(rows[0]) == {
        "label",
        "n",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "mean_ms",
        "calls_per_s",
        "errors",
        "ratio_p50",
    }
    assert rows[0]["n"] == 50 and rows[0]["errors"] == 0


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_plot_histogram(runs: list[Samples]) -> None:
    fig = plot_histogram(*runs, bins=20)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "latency (ms)" and ax.get_ylabel() == "calls"
    assert ax.get_title()
    assert len(ax.containers) == 2
    assert [len(c.patches) for c in ax.containers] == [20, 20]
    assert len(ax.patches) == 40
    # every call is counted once in its series' bars
    assert [sum(p.get_height() for p in c.patches) for c in ax.containers] == [50, 50]
    assert legend_texts(ax) == ["Version x1", "Version x4"]
    fig.canvas.draw()


def test_plot_cdf(runs: list[Samples]) -> None:
    fig = plot_cdf(*runs, log_x=True)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "latency (ms)" and "fraction" in ax.get_ylabel()
    assert ax.get_xscale() == "log"
    lines = ax.get_lines()
    assert len(lines) == 2
    for line, s in zip(lines, runs, strict=True):
        xs, ys = line.get_xdata(), line.get_ydata()
        assert len(xs) == 50 and ys[-1] == 1.0
        assert list(xs) == sorted(x * 1000 for x in s.latencies)
    assert legend_texts(ax) == ["Version x1", "Version x4"]
    fig.canvas.draw()


def test_plot_comparison(runs: list[Samples]) -> None:
    fig = plot_comparison(runs)
    (ax,) = fig.axes
    assert ax.get_ylabel() == "latency (ms)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["p50", "p99"]
    assert len(ax.containers) == 2  # one bar series per Samples
    for bars, s in zip(ax.containers, runs, strict=True):
        heights = [b.get_height() for b in bars.patches]
        assert heights == pytest.approx([s.p50 * 1000, s.p99 * 1000])
    assert legend_texts(ax) == ["Version x1", "Version x4"]
    fig.canvas.draw()


def test_plot_timeseries(runs: list[Samples]) -> None:
    fig = plot_timeseries(*runs)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "time since start (s)" and ax.get_ylabel() == "latency (ms)"
    lines = ax.get_lines()
    assert [len(line.get_xdata()) for line in lines] == [50, 50]
    assert legend_texts(ax) == ["Version x1", "Version x4"]
    fig.canvas.draw()


def test_plots_name_unlabelled_samples(tmp_path) -> None:
    s = Samples(latencies=[0.001, 0.002, 0.003], started=[0.0, 0.1, 0.2], wall=0.3)
    fig = plot_cdf(s)
    assert legend_texts(fig.axes[0]) == ["samples 1"]
    out = tmp_path / "cdf.png"
    fig.savefig(out)
    assert out.stat().st_size > 0
    empty = Samples(label="all failed", errors={"UNAVAILABLE": 2}, wall=0.1)
    assert math.isnan(empty.p50) and empty.calls_per_second == pytest.approx(20)
    assert compare_table([empty])[0]["errors"] == 2


def test_status_code_names_in_errors(rt: FakeRuntime, client: Client) -> None:
    rt.inject_error("Version", grpc.StatusCode.RESOURCE_EXHAUSTED, times=1)
    s = measure(client.version, n=3, warmup=0)
    assert s.errors == {"RESOURCE_EXHAUSTED": 1}


# -- several runs in one figure ------------------------------------------------------------

LABELS = ["in-process, unix", "in-process, TCP", "in-process +2 ms", "separate process"]


@pytest.fixture(scope="module")
def four_runs(client: Client) -> list[Samples]:
    """The comparisons a learner makes: transport, injected latency, another process."""
    from crilab import spawn_runtime

    with (
        FakeRuntime("tcp://127.0.0.1:0") as tcp_rt,
        connect(tcp_rt.endpoint) as tcp,
        FakeRuntime() as slow_rt,
        connect(slow_rt.endpoint) as slow,
        spawn_runtime(timeout=60) as far_rt,
        connect(far_rt.endpoint) as far,
    ):
        slow_rt.inject_latency(0.002, method="Version")
        calls = [client.version, tcp.version, slow.version, far.version]
        return [
            measure(call, n=40, warmup=2, label=label)
            for call, label in zip(calls, LABELS, strict=True)
        ]


def test_four_runs_measured(four_runs: list[Samples]) -> None:
    assert [s.label for s in four_runs] == LABELS
    assert all(s.count == 40 and not s.errors for s in four_runs)
    assert four_runs[2].min >= 0.002  # every call of that run waited out the injected delay
    rows = compare_table(four_runs)
    assert [r["label"] for r in rows] == LABELS and rows[0]["ratio_p50"] == 1.0


@pytest.mark.parametrize("as_list", [False, True], ids=["arguments", "one list"])
@pytest.mark.parametrize(
    ("plot", "xlabel", "ylabel"),
    [
        (plot_cdf, "latency (ms)", "fraction of calls ≤ latency"),
        (plot_histogram, "latency (ms)", "calls"),
        (plot_comparison, "percentile", "latency (ms)"),
        (plot_timeseries, "time since start (s)", "latency (ms)"),
    ],
    ids=["cdf", "histogram", "comparison", "timeseries"],
)
def test_several_runs_in_one_figure(four_runs, plot, xlabel, ylabel, as_list: bool) -> None:
    fig = plot(four_runs) if as_list else plot(*four_runs)
    (ax,) = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == (xlabel, ylabel)
    assert legend_texts(ax) == LABELS
    series = ax.get_lines() if plot in (plot_cdf, plot_timeseries) else ax.containers
    assert len(series) == 4
    if plot is plot_comparison:
        assert [len(bars.patches) for bars in series] == [2, 2, 2, 2]  # p50, p99 each
    if plot is plot_histogram:
        assert [sum(p.get_height() for p in bars.patches) for bars in series] == [40] * 4
    if plot in (plot_cdf, plot_timeseries):
        assert len({line.get_color() for line in series}) == 4  # each run its own colour
    fig.canvas.draw()


def test_log_histogram_keeps_fast_and_slow_runs_apart(four_runs: list[Samples]) -> None:
    fig = plot_histogram(*four_runs, bins=30, log_x=True)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    edges = [p.get_x() for p in ax.containers[0].patches]
    ratios = {round(b / a, 6) for a, b in itertools.pairwise(edges)}
    assert len(ratios) == 1  # bins of equal ratio
    assert [sum(p.get_height() for p in c.patches) for c in ax.containers] == [40] * 4
    fig.canvas.draw()


def test_plots_refuse_what_is_not_samples(four_runs: list[Samples]) -> None:
    with pytest.raises(TypeError, match="percentiles= by keyword"):
        plot_comparison(four_runs, (50, 90))
    with pytest.raises(TypeError, match="plots Samples"):
        plot_cdf([0.001, 0.002])
    fig = plot_comparison(four_runs, percentiles=(50, 90, 99))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["p50", "p90", "p99"]
