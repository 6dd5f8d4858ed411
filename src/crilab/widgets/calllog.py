"""A widget that shows the fake runtime's recorded calls as they happen (fake-only)."""

from __future__ import annotations

import html
import threading
from typing import Any

import ipywidgets as w

_CODE_COLOURS = {"OK": "#2e7d32"}


def calls_html(calls: list[Any], limit: int = 20) -> str:
    """The newest ``limit`` calls as an HTML table, newest last."""
    rows = []
    for c in calls[-limit:]:
        colour = _CODE_COLOURS.get(c.code, "#c62828")
        injected = f" <em>({html.escape(c.injected)})</em>" if c.injected else ""
        rows.append(
            f"<tr><td>{html.escape(c.method)}</td>"
            f'<td style="color:{colour}"><b>{html.escape(c.code)}</b>{injected}</td>'
            f"<td style='text-align:right'>{c.duration * 1000:.2f} ms</td>"
            f"<td>{html.escape(c.details[:80])}</td></tr>"
        )
    body = "".join(rows) or "<tr><td colspan='4'><em>no calls yet</em></td></tr>"
    return (
        "<table class='crilab-call-log'><thead><tr><th>method</th><th>status</th>"
        f"<th>latency</th><th>details</th></tr></thead><tbody>{body}</tbody></table>"
    )


class CallLog(w.VBox):
    """The recorded history of a ``FakeRuntime``, refreshed while it grows.

    A background thread only assigns ``.value`` of an HTML widget (never
    ``display``), which JupyterLab renders reliably from any thread.
    """

    def __init__(self, runtime: Any, *, limit: int = 20, interval: float = 0.5) -> None:
        self.runtime = runtime
        self.limit = limit
        self.table = w.HTML(calls_html([], limit))
        self.title = w.HTML("<b>CRI calls received by the fake runtime</b>")
        self.clear_button = w.Button(description="Clear", icon="trash", layout={"width": "90px"})
        self.clear_button.on_click(lambda _b: self.clear())
        super().__init__([w.HBox([self.title, self.clear_button]), self.table])
        self._seen = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._follow, args=(interval,), name="crilab-calllog", daemon=True
        )
        self.refresh()
        self._thread.start()

    def refresh(self) -> None:
        calls = self.runtime.calls
        marker = (len(calls), calls[-1].started if calls else 0.0)
        if marker != self._seen:
            self._seen = marker
            self.table.value = calls_html(calls, self.limit)

    def clear(self) -> None:
        self.runtime.clear_calls()
        self.refresh()

    def _follow(self, interval: float) -> None:
        while not self._stop.wait(interval):
            if not getattr(self.runtime, "running", True):
                return
            try:
                self.refresh()
            except Exception:  # the runtime went away: stop following quietly
                return

    def close(self) -> None:
        self._stop.set()
        super().close()
