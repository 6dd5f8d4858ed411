"""Section ``notebooks``: execute every ``notebooks/*.ipynb`` headless, timing each.

Each notebook gets a fresh kernel and runs with ``notebooks/`` as its working
directory, as ``make lab`` would open it. Nothing is written back.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .common import REPO_DIR, Settings, section_result

NOTEBOOK_DIR = REPO_DIR / "notebooks"
TIMEOUT_S = 600  # per cell

COLUMNS = [
    ("notebook", "notebook", ""),
    ("cells", "code cells", "d"),
    ("seconds", "seconds", ".1f"),
    ("status", "status", ""),
]


def execute(path: Path) -> dict[str, Any]:
    """Run one notebook in a fresh kernel; a failing cell is reported, not raised."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
        status = "ok"
    except CellExecutionError as exc:
        status = f"error: {str(exc).strip().splitlines()[-1][:120]}"
    cells = sum(1 for c in nb.cells if c.cell_type == "code")
    return {
        "notebook": path.name,
        "cells": cells,
        "seconds": time.perf_counter() - start,
        "status": status,
    }


def run(settings: Settings) -> dict[str, Any]:
    paths = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    if not paths:
        print("  notebooks: none in notebooks/ yet (skipped)")
        return section_result([], COLUMNS, notes=["No notebooks in notebooks/ yet: skipped."])
    rows = []
    for path in paths:
        print(f"  notebooks: {path.name} ...", flush=True)
        rows.append(execute(path))
    total = sum(r["seconds"] for r in rows)
    rows.append({"notebook": "total", "cells": sum(r["cells"] for r in rows), "seconds": total})
    failed = [r["notebook"] for r in rows if r.get("status", "ok") != "ok"]
    notes = [f"{len(paths)} notebooks, fresh kernel each, cwd notebooks/."]
    if failed:
        notes.append(f"Failed: {', '.join(failed)}.")
    return section_result(rows, COLUMNS, notes=notes)
