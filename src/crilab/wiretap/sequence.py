"""Sequence diagrams: who called what, when, and how long the answer took.

Two lanes, ``client`` and ``runtime``. Each call is a request arrow (client →
runtime, labelled with the method) and a response arrow (runtime → client,
labelled with the method and status code); the gap between them is the call's
duration, shaded on the runtime's lane. The source can be a ``FakeRuntime``
(its ``calls`` recording), a ``Tap`` (its ``calls`` from the wire), or a plain
list of ``(method, code, started, duration)`` tuples.

matplotlib is imported only here, when drawing; the Figure is returned, never
shown, so a notebook displays it once and a test can inspect what is drawn.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["sequence_diagram"]

_CLIENT_X = 0.0
_SERVER_X = 1.0


@dataclass(frozen=True)
class _Row:
    method: str
    code: str
    started: float
    duration: float | None  # None: no answer yet


def _rows(source: Any) -> list[_Row]:
    items = getattr(source, "calls", source)
    if callable(items):
        items = items()
    if not isinstance(items, Iterable):
        raise TypeError(
            "sequence_diagram needs a FakeRuntime, a Tap, or a list of "
            f"(method, code, started, duration) tuples, not {type(source).__name__}"
        )
    rows = []
    for item in items:
        if isinstance(item, tuple | list):
            if len(item) < 4:
                raise ValueError(f"expected (method, code, started, duration), got {item!r}")
            method, code, started, duration = item[:4]
        elif isinstance(item, Mapping):
            method, code = item["method"], item.get("code", "")
            started, duration = item["started"], item.get("duration")
        else:
            method, code = item.method, item.code
            started, duration = item.started, item.duration
        rows.append(
            _Row(
                str(method).rpartition("/")[2] or str(method),
                str(code or ""),
                float(started),
                None if duration is None else float(duration),
            )
        )
    rows.sort(key=lambda r: r.started)
    return rows


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.2f} ms" if ms < 100 else f"{ms:.0f} ms"


def sequence_diagram(
    source: Any,
    *,
    title: str | None = None,
    scale: str = "order",
    max_calls: int = 40,
    client: str = "client",
    server: str = "runtime",
) -> Any:
    """Draw the calls of ``source`` as a sequence diagram; return the matplotlib Figure.

    ``scale="order"`` gives every call a row of its own, the gap between request
    and response proportional to the call's duration (the slowest call fills
    its row); ``scale="time"`` puts arrows at their real times (milliseconds
    since the first call), so waits between calls show too. Only the last
    ``max_calls`` calls are drawn.
    """
    if scale not in ("order", "time"):
        raise ValueError('scale must be "order" or "time"')
    import matplotlib.pyplot as plt
    from matplotlib.transforms import offset_copy

    rows = _rows(source)
    total = len(rows)
    if max_calls and total > max_calls:
        rows = rows[-max_calls:]
    n = len(rows)
    height = min(32.0, max(2.6, 0.75 * n + 1.4))
    fig, ax = plt.subplots(figsize=(7.5, height), layout="constrained")
    plt.close(fig)  # detached from pyplot: shown once when returned, never twice
    above = offset_copy(ax.transData, fig=fig, y=2, units="points")
    below = offset_copy(ax.transData, fig=fig, y=-2, units="points")

    t0 = rows[0].started if rows else 0.0
    longest = max((r.duration or 0.0 for r in rows), default=0.0)
    spans: list[tuple[float, float | None]] = []
    for i, r in enumerate(rows):
        if scale == "time":
            top = (r.started - t0) * 1000
            spans.append((top, None if r.duration is None else top + r.duration * 1000))
        else:
            # request label above the request arrow, response label below the response
            # arrow: leave room for both between one call's answer and the next request
            gap = 0.25 + (0.3 * (r.duration / longest) if longest and r.duration else 0.0)
            spans.append((i + 0.2, None if r.duration is None else i + 0.2 + gap))
    bottom = max([s[1] if s[1] is not None else s[0] for s in spans], default=1.0)
    if scale == "order":
        bottom = max(bottom, n)
    pad = max(bottom * 0.04, 0.3 if scale == "order" else 0.05)
    top_y = -pad * 2.5

    for x, name in ((_CLIENT_X, client), (_SERVER_X, server)):
        ax.plot([x, x], [top_y, bottom + pad], color="0.6", linewidth=1, linestyle="--", zorder=1)
        ax.text(
            x,
            top_y,
            name,
            ha="center",
            va="center",
            fontsize=11,
            fontweight="bold",
            bbox={"boxstyle": "round,pad=0.4", "facecolor": "#eef2f8", "edgecolor": "0.4"},
            zorder=4,
            gid="lane",
        )

    for r, (y_req, y_resp) in zip(rows, spans, strict=True):
        failed = bool(r.code) and r.code != "OK"
        colour = "#b00020" if failed else "#1f4e99"
        request = ax.annotate(
            "",
            xy=(_SERVER_X, y_req),
            xytext=(_CLIENT_X, y_req),
            arrowprops={"arrowstyle": "-|>", "color": "#1f4e99", "linewidth": 1.2},
            zorder=3,
        )
        request.set_gid("request")
        ax.text(
            0.5,
            y_req,
            r.method,
            ha="center",
            va="bottom",
            fontsize=8,
            color="#1f4e99",
            gid="label",
            transform=above,
        )
        if y_resp is None:
            ax.text(
                _SERVER_X + 0.03,
                y_req,
                "(no answer yet)",
                ha="left",
                va="center",
                fontsize=7,
                color="0.4",
                gid="label",
            )
            continue
        ax.add_patch(
            plt.Rectangle(
                (_SERVER_X - 0.015, y_req),
                0.03,
                max(y_resp - y_req, 1e-9),
                facecolor=colour,
                alpha=0.25,
                edgecolor="none",
                zorder=2,
            )
        )
        response = ax.annotate(
            "",
            xy=(_CLIENT_X, y_resp),
            xytext=(_SERVER_X, y_resp),
            arrowprops={
                "arrowstyle": "-|>",
                "color": colour,
                "linewidth": 1.2,
                "linestyle": "--",
            },
            zorder=3,
        )
        response.set_gid("response")
        assert r.duration is not None
        ax.text(
            0.5,
            y_resp,
            f"{r.method} → {r.code or '?'} ({_ms(r.duration)})",
            ha="center",
            va="top",
            fontsize=8,
            color=colour,
            gid="label",
            transform=below,
        )

    if not rows:
        ax.text(0.5, 0.5, "no calls recorded yet", ha="center", va="center", color="0.4")
    ax.set_xlim(-0.3, 1.3)
    ax.set_ylim(bottom + pad, top_y - pad)  # time runs down the page
    ax.set_xticks([])
    ax.spines[["top", "right", "bottom"]].set_visible(False)
    if scale == "time":
        ax.set_ylabel("ms since the first call")
    else:
        ax.set_yticks([])
        ax.spines["left"].set_visible(False)
    heading = title if title is not None else f"{server}: {n} call{'' if n == 1 else 's'}"
    if total > n:
        heading += f" (the last {n} of {total})"
    ax.set_title(heading)
    return fig
