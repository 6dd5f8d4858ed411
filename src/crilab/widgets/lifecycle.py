"""The pod-lifecycle panel: drive a runtime with buttons and watch the CRI calls behind them.

It talks to the runtime only through ``crilab.Client`` (CRI calls), so it works against the fake
runtime and against containerd alike. Each click makes one or two CRI calls; the panel shows
which, with status code and latency, and turns an error into an explanation, never a traceback.
Updates come from GetContainerEvents when the runtime offers it, else from polling.
"""

from __future__ import annotations

import html
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import ipywidgets as w

from ..builders import NOTEBOOK_LABELS, container_config, pod_config
from ..client import Client, connect
from ..explanations import explain
from ..stubs import api_pb2
from .statemachine import short_state, state_machine_svg

#: What a learner can start, as (container name, command).
PRESETS: dict[str, tuple[str, list[str]]] = {
    "sleeper: sh -c 'echo started; sleep 3600'": (
        "sleeper",
        ["sh", "-c", "echo started; sleep 3600"],
    ),
    "one-shot: echo hello": ("oneshot", ["echo", "hello from crilab"]),
    "crasher: sh -c 'echo oops >&2; exit 3'": ("crasher", ["sh", "-c", "echo oops >&2; exit 3"]),
    "ticker: while true; do date; sleep 1; done": (
        "ticker",
        ["sh", "-c", "while true; do date; sleep 1; done"],
    ),
}

_STATE_COLOURS = {
    "READY": "#2e7d32",
    "RUNNING": "#2e7d32",
    "CREATED": "#1565c0",
    "NOTREADY": "#757575",
    "EXITED": "#757575",
}


_TABLE_STYLE = (
    "<style>.crilab-table{border-collapse:collapse;margin-top:6px}"
    ".crilab-table th,.crilab-table td{border-bottom:1px solid #ddd;padding:3px 12px;"
    "text-align:left}</style>"
)


def _state_cell(name: str) -> str:
    colour = _STATE_COLOURS.get(name, "#333")
    return f'<td class="crilab-state" data-state="{name}" style="color:{colour}"><b>{name}</b></td>'


def _pod_state(state: int) -> str:
    return api_pb2.PodSandboxState.Name(state).removeprefix("SANDBOX_")


class LifecyclePanel(w.VBox):
    """Buttons for the pod lifecycle, a live table, the last CRI call, the state machine.

    ``target`` is a ``crilab.Client``, a ``FakeRuntime`` or an endpoint string.
    ``image`` defaults to ``$CRILAB_IMAGE`` or busybox; it is pulled only when missing
    (the kubelet's IfNotPresent policy). ``host_network`` makes pods a real containerd
    without CNI can run.
    """

    def __init__(
        self,
        target: Client | Any | str,
        *,
        image: str | None = None,
        host_network: bool | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        self.client = target if isinstance(target, Client) else connect(_endpoint_of(target))
        self.image = image or os.environ.get("CRILAB_IMAGE") or "busybox"
        if host_network is None:
            host_network = bool(os.environ.get("CONTAINER_RUNTIME_ENDPOINT"))
        self.host_network = host_network
        self.pod_id: str | None = None
        self._pods_made = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.history: list[tuple[str, str, float]] = []  # (call, code, seconds)
        self._build(poll_interval)

    # -- layout --------------------------------------------------------------------

    def _build(self, poll_interval: float) -> None:
        def button(label: str, icon: str, action: Callable[[], None], style: str = "") -> w.Button:
            b = w.Button(
                description=label,
                icon=icon,
                button_style=style,
                layout={"width": "auto"},
                tooltip=label,
            )
            b.on_click(lambda _b: self._safely(action))
            return b

        self.preset = w.Dropdown(
            options=list(PRESETS),
            description="Container:",
            layout={"width": "420px"},
            style={"description_width": "80px"},
        )
        self.run_pod_button = button("Run pod", "cube", self.run_pod, "primary")
        self.create_button = button("Create container", "plus", self.create_container)
        self.start_button = button("Start", "play", self.start, "success")
        self.stop_button = button("Stop", "stop", self.stop)
        self.remove_button = button("Remove container", "trash", self.remove)
        self.exec_command = w.Text(
            value="echo hi",
            description="Exec:",
            layout={"width": "260px"},
            style={"description_width": "40px"},
        )
        self.exec_button = button("Exec", "terminal", self.exec_sync)
        self.stop_pod_button = button("Stop pod", "pause", self.stop_pod, "warning")
        self.remove_pod_button = button("Remove pod", "times", self.remove_pod, "danger")
        self.container = w.Dropdown(
            options=[],
            description="Selected:",
            layout={"width": "420px"},
            style={"description_width": "80px"},
        )
        self.container.observe(lambda _c: self._draw_machine(), names="value")
        self.table = w.HTML()
        self.last_call = w.HTML("<em>Click “Run pod” to start: every click is a CRI call.</em>")
        self.output = w.HTML()
        self.machine = w.HTML(state_machine_svg(None))
        self.footer = w.HTML()
        super().__init__(
            [
                w.HTML("<h4 style='margin:0'>Pod lifecycle, one CRI call per click</h4>"),
                w.HBox([self.run_pod_button, self.stop_pod_button, self.remove_pod_button]),
                w.HBox([self.preset, self.create_button]),
                w.HBox([self.container, self.start_button, self.stop_button, self.remove_button]),
                w.HBox([self.exec_command, self.exec_button]),
                self.last_call,
                self.output,
                self.machine,
                self.table,
                self.footer,
            ]
        )
        self.add_class("crilab-lifecycle-panel")
        self.refresh()
        threading.Thread(
            target=self._follow, args=(poll_interval,), daemon=True, name="crilab-panel-updates"
        ).start()

    # -- actions (each is one or two CRI calls) ------------------------------------------

    def _call(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            result = fn()
        except grpc.RpcError as err:
            took = time.perf_counter() - t0
            self.history.append((name, err.code().name, took))
            raise
        took = time.perf_counter() - t0
        self.history.append((name, "OK", took))
        return result

    def _safely(self, action: Callable[[], None]) -> None:
        """Run a button's action; show its calls, or the explained error, never a traceback."""
        start = len(self.history)
        self.output.value = ""
        try:
            action()
        except grpc.RpcError as err:  # the runtime refused: its status code is the lesson
            self._show_calls(start, error=explain(err)._repr_html_())
        except Exception as err:  # a click in the wrong order: say what to do, never crash
            self._show_calls(start, error=_hint_html(err))
        else:
            self._show_calls(start)
        self.refresh()

    def _show_calls(self, start: int, error: str = "") -> None:
        rows = []
        for name, code, took in self.history[start:]:
            colour = "#2e7d32" if code == "OK" else "#c62828"
            rows.append(
                f"<code>{html.escape(name)}</code> → "
                f"<b style='color:{colour}' class='crilab-code'>{code}</b> in {took * 1000:.2f} ms"
            )
        calls = " · ".join(rows) if rows else "<em>none made</em>"
        self.last_call.value = f"<div class='crilab-last-call'>CRI call: {calls}</div>{error}"

    def run_pod(self) -> None:
        self._pods_made += 1
        config = pod_config(
            f"lab-pod-{self._pods_made}",
            "crilab",
            uid=str(uuid.uuid4()),
            labels=NOTEBOOK_LABELS,  # so lab.cleanup() may remove it, and nothing else
            host_network=self.host_network,
        )
        self.pod_config = config
        self.pod_id = self._call("RunPodSandbox", lambda: self.client.run_pod_sandbox(config))

    def create_container(self) -> None:
        pod_id = self._require_pod()
        name, command = PRESETS[self.preset.value]
        attempt = sum(
            1 for c in self.client.list_containers(pod_id=pod_id) if c.metadata.name == name
        )
        # The kubelet's IfNotPresent policy: ImageStatus first, PullImage only when missing.
        if self._call("ImageStatus", lambda: self.client.image_status(self.image)) is None:
            self._call("PullImage", lambda: self.client.pull_image(self.image))
        config = container_config(name, self.image, command, attempt=attempt)
        cid = self._call(
            "CreateContainer",
            lambda: self.client.create_container(
                pod_id, config, sandbox_config=getattr(self, "pod_config", None)
            ),
        )
        self.refresh()
        self.container.value = cid

    def start(self) -> None:
        cid = self._require_container()
        self._call("StartContainer", lambda: self.client.start_container(cid))

    def stop(self) -> None:
        cid = self._require_container()
        self._call("StopContainer", lambda: self.client.stop_container(cid, timeout_seconds=0))

    def remove(self) -> None:
        cid = self._require_container()
        self._call("RemoveContainer", lambda: self.client.remove_container(cid))

    def exec_sync(self) -> None:
        import shlex

        cid = self._require_container()
        try:
            cmd = shlex.split(self.exec_command.value)
        except ValueError as err:
            raise ValueError(
                f"cannot read the Exec command ({err}): quote it as in a shell, e.g. echo 'a b'"
            ) from None
        if not cmd:
            raise ValueError("the Exec command is empty: type one, e.g. echo hi")
        reply = self._call("ExecSync", lambda: self.client.exec_sync(cid, cmd, timeout_seconds=5))
        out = (reply.stdout + reply.stderr).decode(errors="replace")
        self.output.value = (
            f"<pre class='crilab-exec-output'>$ {html.escape(self.exec_command.value)}\n"
            f"{html.escape(out)}(exit code {reply.exit_code})</pre>"
        )

    def stop_pod(self) -> None:
        pod_id = self._require_pod()
        self._call("StopPodSandbox", lambda: self.client.stop_pod_sandbox(pod_id))

    def remove_pod(self) -> None:
        pod_id = self._require_pod()
        self._call("RemovePodSandbox", lambda: self.client.remove_pod_sandbox(pod_id))
        self.pod_id = None

    def _require_pod(self) -> str:
        if not self.pod_id:
            raise ValueError("no pod yet: click “Run pod” first")
        return self.pod_id

    def _require_container(self) -> str:
        if not self.container.value:
            raise ValueError("no container selected: click “Create container” first")
        return self.container.value

    # -- the view ------------------------------------------------------------------

    def refresh(self) -> bool:
        """Re-read pods and containers (two List calls) and redraw; safe from any thread."""
        with self._lock:
            try:
                pods = self.client.list_pod_sandbox()
                ctrs = self.client.list_containers()
            except (grpc.RpcError, ValueError) as err:  # ValueError: the channel was closed
                code = err.code().name if isinstance(err, grpc.RpcError) else "closed"
                self.footer.value = f"<em>could not list pods and containers: {code}</em>"
                return False
            self._states = {c.id: api_pb2.ContainerState.Name(c.state) for c in ctrs}
            rows = []
            for p in pods:
                rows.append(
                    f"<tr data-kind='pod' data-id='{p.id}'><td>pod</td>"
                    f"<td>{html.escape(p.metadata.name)}</td><td><code>{p.id[:13]}</code></td>"
                    f"{_state_cell(_pod_state(p.state))}</tr>"
                )
                for c in (c for c in ctrs if c.pod_sandbox_id == p.id):
                    rows.append(
                        f"<tr data-kind='container' data-id='{c.id}'><td>&nbsp;&nbsp;container</td>"
                        f"<td>{html.escape(c.metadata.name)} (attempt {c.metadata.attempt})</td>"
                        f"<td><code>{c.id[:13]}</code></td>"
                        f"{_state_cell(short_state(api_pb2.ContainerState.Name(c.state)))}</tr>"
                    )
            body = "".join(rows) or "<tr><td colspan='4'><em>no pods</em></td></tr>"
            self.table.value = (
                f"{_TABLE_STYLE}<table class='crilab-table'><thead><tr><th>kind</th><th>name</th>"
                f"<th>ID</th><th>state</th></tr></thead><tbody>{body}</tbody></table>"
            )
            options = [(f"{c.metadata.name} ({c.id[:13]})", c.id) for c in ctrs]
            selected = self.container.value
            if [o[1] for o in self.container.options] != [o[1] for o in options]:
                self._gone = selected if selected and selected not in self._states else None
                self.container.options = options
                if selected in self._states:
                    self.container.value = selected
            self._draw_machine()
            return True

    def _draw_machine(self) -> None:
        cid = self.container.value
        if cid is None and getattr(self, "_gone", None):
            state = "REMOVED"  # the selected container was just removed: show where it went
        else:
            state = getattr(self, "_states", {}).get(cid, "REMOVED" if cid else None)
        self.machine.value = state_machine_svg(state)

    def _follow(self, interval: float) -> None:
        """Refresh on container events; fall back to polling if the runtime has none."""
        try:
            self._events = self.client.container_events()
            self.footer.value = "<small>live updates: GetContainerEvents</small>"
            for _event in self._events:
                if self._stop.is_set():
                    return
                self.refresh()
        except grpc.RpcError:
            pass
        if self._stop.is_set():
            return
        self.footer.value = "<small>live updates: polling ListContainers</small>"
        failures = 0
        while not self._stop.wait(interval) and failures < 30:
            failures = 0 if self.refresh() else failures + 1

    def close(self) -> None:
        self._stop.set()
        events = getattr(self, "_events", None)
        if events is not None:
            events.cancel()
        super().close()


def _hint_html(err: Exception) -> str:
    """A mistake the panel caught before any call (no pod yet...): what to do, plainly."""
    text = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
    return (
        "<div class='crilab-hint' style='border-left:4px solid #ef6c00;background:#fff3e0;"
        f"padding:.4em 1em;margin:.3em 0'>⚠ {html.escape(text)}</div>"
    )


def _endpoint_of(target: Any) -> str:
    endpoint = getattr(target, "endpoint", target)
    return endpoint if isinstance(endpoint, str) else str(endpoint)
