"""End to end in a real browser: JupyterLab in headless Chromium, the lifecycle panel clicked.

JupyterLab starts on a free port, serving a temporary copy of ``notebooks/`` (autosave and
checkpoints never touch the tracked files) with its own settings: no news or update pop-up
covers the page. Debian's ``chromium``, driven by Playwright (no downloaded browser), opens
the pod-lifecycle notebook, runs it, clicks the panel's buttons and checks what the page shows:
the table's pod and container moving through their states. Screenshots are saved in
``test-artifacts/`` for a human to look at.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from .conftest import ROOT, require

pytestmark = pytest.mark.timeout(420)

NOTEBOOK = "04-pod-lifecycle.ipynb"
ARTIFACTS = ROOT / "test-artifacts"
# A fresh JupyterLab asks "get notified about official Jupyter news?" in a toast that can
# cover the notebook: answer it in the settings, as a user who clicked "No" would have.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension:notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[str]:
    require(
        shutil.which("chromium"),
        "Debian's chromium is not installed (apt-get install chromium); .ci/run installs it",
    )
    if not (ROOT / "notebooks" / NOTEBOOK).is_file():
        pytest.fail(f"notebooks/{NOTEBOOK} is missing")
    port, token = _free_port(), secrets.token_hex(16)
    home = tmp_path_factory.mktemp("labhome")
    served = home / "notebooks"  # a copy: autosave may write outputs into what it serves
    shutil.copytree(ROOT / "notebooks", served, ignore=shutil.ignore_patterns(".*"))
    settings = home / "settings"
    for plugin, values in LAB_SETTINGS.items():
        path = settings / f"{plugin.replace(':', '/')}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    cmd = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={served}",
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    scratch = home / "tmp"  # the kernels' temp dir: what they leave behind is seen here
    scratch.mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(scratch),
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
    }
    log = (home / "lab.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            assert proc.poll() is None, (home / "lab.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "JupyterLab did not start in 90 s"
            time.sleep(0.5)
    yield f"{base}/lab/tree/{NOTEBOOK}?token={token}"
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    # the kernel stopped with the server, and its runtime with it: no socket or state dir left
    # (container logs go to crilab-logs-UID, builders.pod_config's default log_directory,
    # which outlives the kernel: not checked here)
    left = sorted(p.name for p in scratch.iterdir() if p.name != f"crilab-logs-{os.getuid()}")
    assert not left, f"left behind in the kernels' temp dir: {left}"


def test_lifecycle_panel_in_a_real_browser(lab: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS, headless=True
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(lab)
            page.wait_for_function(
                "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                " && window.jupyterapp.shell.currentWidget.sessionContext"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                timeout=120_000,
            )
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            panel = page.locator(".crilab-lifecycle-panel").first
            expect(panel).to_be_visible(timeout=180_000)
            expect(page.get_by_text("official Jupyter news")).to_have_count(0)
            panel.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "browser-1-panel.png"))

            table = panel.locator(".crilab-table")

            def click(label: str) -> None:
                exact = re.compile(rf"^\s*{re.escape(label)}\s*$")
                panel.locator("button").filter(has_text=exact).click()

            def row_state(kind: str, state: str) -> None:
                expect(
                    table.locator(f"tr[data-kind='{kind}'] td[data-state='{state}']").first
                ).to_be_visible(timeout=30_000)

            click("Run pod")
            row_state("pod", "READY")
            click("Create container")
            row_state("container", "CREATED")
            expect(panel.locator(".crilab-last-call")).to_contain_text("CreateContainer")
            click("Start")
            row_state("container", "RUNNING")
            expect(panel.locator("rect[data-state='RUNNING'][data-current='true']")).to_have_count(
                1
            )
            page.screenshot(path=str(ARTIFACTS / "browser-2-running.png"))
            click("Start")  # twice: the runtime refuses, the panel explains
            expect(panel.locator(".crilab-last-call")).to_contain_text("FAILED_PRECONDITION")
            click("Stop")
            row_state("container", "EXITED")
            click("Stop pod")
            row_state("pod", "NOTREADY")
            page.screenshot(path=str(ARTIFACTS / "browser-3-stopped.png"))
            click("Remove pod")
            expect(table).to_contain_text("no pods", timeout=30_000)
        finally:
            page.screenshot(path=str(ARTIFACTS / "browser-last.png"))
            browser.close()
    assert (ARTIFACTS / "browser-2-running.png").stat().st_size > 10_000


def test_what_the_tests_leave_is_ignored_by_git() -> None:
    """Screenshots and a lab's checkpoints never show up as changes to commit."""
    git = shutil.which("git")
    require(git and (ROOT / ".git").exists(), "needs git and a git checkout")
    assert git is not None
    left = [
        "test-artifacts/browser-last.png",
        "notebooks/.ipynb_checkpoints/04-pod-lifecycle-checkpoint.ipynb",
    ]
    done = subprocess.run(
        [git, "check-ignore", "--no-index", *left], cwd=ROOT, capture_output=True, text=True
    )
    assert sorted(done.stdout.split()) == sorted(left), done.stderr
    kept = subprocess.run(
        [git, "check-ignore", "--no-index", f"notebooks/{NOTEBOOK}"], cwd=ROOT, capture_output=True
    )
    assert kept.returncode == 1, "the notebooks themselves are tracked, not ignored"
