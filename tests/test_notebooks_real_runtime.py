"""Notebooks 03–06 against a real containerd, steered by crictl's own variable.

With ``CONTAINER_RUNTIME_ENDPOINT`` pointing at ``../shared/containerd/containerd-ref`` and
``CRILAB_IMAGE`` naming its local busybox, every cell must run: fake-only cells skip with a
word, pulls follow IfNotPresent (containerd-ref must never pull), pods use the host network.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").glob("0[3-6]-*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_against_containerd(path: Path, containerd: str, monkeypatch) -> None:
    monkeypatch.setenv("CONTAINER_RUNTIME_ENDPOINT", containerd)
    monkeypatch.setenv("CRILAB_IMAGE", "localhost/crilab/busybox:local")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    text = "\n".join(
        out.get("text", "") if isinstance(out.get("text", ""), str) else ""
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    assert f"Using the runtime at {containerd}" in text
    assert "crilab's fake runtime at" not in text
    assert os.environ["CONTAINER_RUNTIME_ENDPOINT"] == containerd


def test_there_are_four_runtime_notebooks() -> None:
    assert [p.name[:2] for p in NOTEBOOKS] == ["03", "04", "05", "06"]
