"""Notebooks 03–06 against a real containerd, steered by crictl's own variable.

With ``CONTAINER_RUNTIME_ENDPOINT`` pointing at ``../shared/containerd/containerd-ref`` and
``CRILAB_IMAGE`` naming its local busybox, every cell must run, as shipped and with the
reference solutions: the notebook says it uses that runtime, every fake-only cell says it
was skipped, every check says "Not solved yet" as shipped and "Solved" once solved, pulls
follow IfNotPresent (containerd's log shows no PullImage: there is no registry to reach),
pods use the host network.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from crilab.exercises import solution_source

from .conftest import ROOT
from .test_notebooks import _statuses, tagged, text_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").glob("0[3-6]-*.ipynb"))
#: What ``Lab.fake_only`` prints on a real runtime (crilab/notebook.py).
SKIPPED = re.compile(
    r"\(skipped: (.+?) needs crilab's fake runtime; this notebook talks to (\S+)\)"
)
#: A cell that is all fake-only: its first line asks ``lab.fake_only(...)``.
FAKE_ONLY_CELL = re.compile(r"^if lab\.fake_only\(")


def _containerd_log(endpoint: str) -> Path:
    """containerd-ref's log: DIR/logs/containerd.log for the socket DIR/run/containerd.sock."""
    return Path(endpoint.removeprefix("unix://")).parent.parent / "logs" / "containerd.log"


@pytest.mark.parametrize("solved", [False, True], ids=["as-shipped", "solved"])
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_against_containerd(
    path: Path, solved: bool, containerd: str, monkeypatch
) -> None:
    monkeypatch.setenv("CONTAINER_RUNTIME_ENDPOINT", containerd)
    monkeypatch.setenv("CRILAB_IMAGE", "localhost/crilab/busybox:local")
    nb = nbformat.read(path, as_version=4)
    if solved:
        for index, exercise_id in tagged(nb, "exercise"):
            nb.cells[index].source = solution_source(exercise_id)
    NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    text = "\n".join(text_of(cell) for cell in code)
    assert f"Using the runtime at {containerd}" in text
    assert "crilab's fake runtime at" not in text
    assert os.environ["CONTAINER_RUNTIME_ENDPOINT"] == containerd

    # every fake-only cell said so, naming what it needs and the runtime it talks to
    fake_only = [cell for cell in code if FAKE_ONLY_CELL.match(cell.source)]
    assert fake_only, "each of notebooks 03-06 has fake-only cells"
    for cell in fake_only:
        said = SKIPPED.search(text_of(cell))
        assert said, f"a fake-only cell did not say it was skipped:\n{cell.source}"
        assert said.group(2) == containerd, said.group(0)

    statuses = _statuses(nb)
    want = "solved" if solved else "not solved"
    assert statuses and all(status == want for _, status in statuses), statuses

    # containerd logs RunPodSandbox, CreateContainer, PullImage... at info level, so the log of
    # a notebook that ran pods shows them, and a PullImage would show too
    log = _containerd_log(containerd).read_text()
    if path.name[:2] in ("04", "06"):
        assert 'msg="RunPodSandbox' in log, "containerd's log does not show the notebook's pods"
    pulls = [line for line in log.splitlines() if 'msg="PullImage' in line]
    assert not pulls, f"containerd was asked to pull (there is no registry here): {pulls}"


def test_there_are_four_runtime_notebooks() -> None:
    assert [p.name[:2] for p in NOTEBOOKS] == ["03", "04", "05", "06"]
