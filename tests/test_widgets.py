"""Widgets driven by real clicks (``Button.click()``) against a real fake runtime."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from crilab import FakeRuntime, connect
from crilab.builders import container_config, pod_config
from crilab.widgets import PRESETS, CallLog, LifecyclePanel, Progress, state_machine_svg

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def rt() -> Iterator[FakeRuntime]:
    with FakeRuntime(seed="widgets") as runtime:
        yield runtime


@pytest.fixture
def panel(rt: FakeRuntime) -> Iterator[LifecyclePanel]:
    p = LifecyclePanel(connect(rt.endpoint), image="busybox")
    yield p
    p.close()


def eventually(check, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "the widget never showed the expected state"
        time.sleep(0.02)


def test_clicks_drive_the_runtime_and_the_table(rt: FakeRuntime, panel: LifecyclePanel) -> None:
    panel.run_pod_button.click()
    assert len(rt.state.pods) == 1
    assert "data-state='READY'" in panel.table.value.replace('"', "'")
    assert "RunPodSandbox" in panel.last_call.value and "OK" in panel.last_call.value

    panel.preset.value = next(k for k in PRESETS if k.startswith("sleeper"))
    panel.create_button.click()
    (ctr,) = rt.state.containers.values()
    assert "PullImage" in panel.last_call.value  # IfNotPresent: busybox was missing
    assert panel.container.value == ctr.id
    assert 'data-state="CREATED" data-current="true"' in panel.machine.value

    panel.start_button.click()
    eventually(lambda: "data-state='RUNNING'" in panel.table.value.replace('"', "'"))
    assert 'data-state="RUNNING" data-current="true"' in panel.machine.value

    panel.exec_command.value = "echo hi from the panel"
    panel.exec_button.click()
    assert "hi from the panel" in panel.output.value and "exit code 0" in panel.output.value

    panel.stop_button.click()
    eventually(lambda: "data-state='EXITED'" in panel.table.value.replace('"', "'"))
    panel.remove_button.click()
    assert not rt.state.containers
    assert 'data-state="REMOVED" data-current="true"' in panel.machine.value

    panel.stop_pod_button.click()
    assert "NOTREADY" in panel.table.value
    panel.remove_pod_button.click()
    assert not rt.state.pods
    rt.assert_calls(
        [
            "RunPodSandbox",
            "PullImage",
            "CreateContainer",
            "StartContainer",
            "ExecSync",
            "StopContainer",
            "RemoveContainer",
            "StopPodSandbox",
            "RemovePodSandbox",
        ]
    )


def test_a_second_create_gets_the_next_attempt(rt: FakeRuntime, panel: LifecyclePanel) -> None:
    panel.run_pod_button.click()
    panel.create_button.click()
    panel.create_button.click()
    attempts = sorted(c.item.metadata.attempt for c in rt.state.containers.values())
    assert attempts == [0, 1]


def test_errors_are_explained_in_the_panel_not_raised(
    rt: FakeRuntime, panel: LifecyclePanel
) -> None:
    panel.start_button.click()  # nothing selected yet: a learner's mistake
    shown = panel.last_call.value
    assert "click “Create container” first" in shown and "crilab-hint" in shown
    assert "none made" in shown  # no CRI call was made, and the panel says so
    # a plain hint: no "the call never reached the server", no traceback to read
    assert "traceback" not in shown.lower() and "server" not in shown
    panel.create_button.click()
    assert "click “Run pod” first" in panel.last_call.value
    panel.run_pod_button.click()
    panel.create_button.click()
    rt.inject_error("StartContainer", "UNAVAILABLE", "the runtime is restarting")
    panel.start_button.click()
    shown = panel.last_call.value
    assert "UNAVAILABLE" in shown and "the runtime is restarting" in shown
    assert "Traceback" not in shown
    panel.start_button.click()
    panel.start_button.click()  # starting twice: the runtime refuses
    assert "FAILED_PRECONDITION" in panel.last_call.value
    panel.exec_command.value = "echo 'unclosed"
    panel.exec_button.click()
    assert "quote it as in a shell" in panel.last_call.value
    assert "crilab-hint" in panel.last_call.value


def row_state(panel: LifecyclePanel, cid: str) -> str | None:
    """The state the panel's table shows for container ``cid`` (None: no row for it)."""
    found = re.search(rf"data-id='{cid}'>.*?data-state=\"(\w+)\"", panel.table.value)
    return found.group(1) if found else None


def start_briefly(rt: FakeRuntime) -> str:
    """A container started behind the panel's back (no click) that exits after ~0.5 s."""
    with connect(rt.endpoint) as other:
        pod = other.run_pod_sandbox(pod_config("elsewhere"))
        other.ensure_image("busybox")
        cid = other.create_container(
            pod, container_config("brief", "busybox", ["sh", "-c", "sleep 0.5"])
        )
        other.start_container(cid)
    return cid


def test_updates_arrive_from_container_events(rt: FakeRuntime) -> None:
    # polling once an hour: within this test only an event can move the table
    panel = LifecyclePanel(connect(rt.endpoint), image="busybox", poll_interval=3600)
    try:
        eventually(lambda: rt.state.events.subscribers == 1)  # the panel's stream is live
        assert "GetContainerEvents" in panel.footer.value
        cid = start_briefly(rt)
        eventually(lambda: row_state(panel, cid) == "EXITED", within=20)
        assert "GetContainerEvents" in panel.footer.value  # no fallback happened
    finally:
        panel.close()
    eventually(lambda: rt.state.events.subscribers == 0)  # close() ended the stream


def test_without_events_the_panel_polls(rt: FakeRuntime) -> None:
    rt.inject_error("GetContainerEvents", "UNIMPLEMENTED", times=None)  # an older runtime
    panel = LifecyclePanel(connect(rt.endpoint), image="busybox", poll_interval=0.1)
    try:
        eventually(lambda: "polling ListContainers" in panel.footer.value)
        assert rt.state.events.subscribers == 0
        assert [c.code for c in rt.calls_to("GetContainerEvents")] == ["UNIMPLEMENTED"]
        cid = start_briefly(rt)
        eventually(lambda: row_state(panel, cid) == "EXITED", within=20)
    finally:
        panel.close()


def test_call_log_follows_the_history(rt: FakeRuntime) -> None:
    log = CallLog(rt, interval=0.05)
    try:
        client = connect(rt.endpoint)
        client.version()
        client.image_status("nope:1")
        eventually(lambda: "ImageStatus" in log.table.value)
        assert "Version" in log.table.value
        log.clear_button.click()
        assert "no calls yet" in log.table.value
    finally:
        log.close()


def test_progress_and_state_machine() -> None:
    bar = Progress("calls")
    bar(5, 10)
    assert (bar.bar.value, bar.bar.max, bar.label.value) == (5, 10, "5/10")
    bar(10, 10)
    assert bar.bar.bar_style == "success"
    svg = state_machine_svg("CONTAINER_EXITED")
    assert svg.count('data-current="true"') == 1
    assert 'data-state="EXITED" data-current="true"' in svg


def test_the_state_machine_has_every_transition_the_runtime_allows(rt: FakeRuntime) -> None:
    import re

    svg = state_machine_svg(None)
    arrows = set(re.findall(r'data-from="(\w+)" data-to="(\w+)"', svg))
    assert arrows == {
        ("CREATED", "RUNNING"),
        ("RUNNING", "EXITED"),
        ("EXITED", "REMOVED"),
        ("CREATED", "REMOVED"),
    }
    # and the skip is real: the runtime removes a container that was never started
    client = connect(rt.endpoint)
    try:
        pod = client.run_pod_sandbox(pod_config("skip"))
        client.ensure_image("busybox")
        cid = client.create_container(pod, container_config("never", "busybox", ["true"]))
        client.remove_container(cid)
        assert client.list_containers() == []
    finally:
        client.close()
