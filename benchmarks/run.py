"""crilab's benchmarks: ``make bench`` runs this file.

    .venv/bin/python benchmarks/run.py                 # every section, then README + plot
    .venv/bin/python benchmarks/run.py --quick         # a smoke run of about a minute
    .venv/bin/python benchmarks/run.py --only scale    # one section (repeatable)
    .venv/bin/python benchmarks/run.py --write-readme  # README.md + latency.png only

Each section prints one table and is stored in ``benchmarks/results.json``
(``results-quick.json`` for ``--quick``, so a smoke run never replaces real
figures). ``--only`` updates just its sections in that file. A full run ends
by writing ``benchmarks/README.md`` and ``benchmarks/latency.png`` from the
JSON. The exit status is 1 if a section crashed; a FAIL verdict is a finding,
reported in the tables, not an error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from suite import latency, memory, notebooks, report, scale, startup, throughput, wiretap
from suite.common import BENCH_DIR, Settings, cpu_model, format_cell, nproc, text_table

SECTIONS: dict[str, Callable[[Settings], dict[str, Any]]] = {
    "latency": latency.run,
    "throughput": throughput.run,
    "scale": scale.run,
    "startup": startup.run,
    "memory": memory.run,
    "notebooks": notebooks.run,
    "wiretap": wiretap.run,
}
RESULTS = BENCH_DIR / "results.json"
QUICK_RESULTS = BENCH_DIR / "results-quick.json"
README = BENCH_DIR / "README.md"
PLOT = BENCH_DIR / "latency.png"


def machine() -> dict[str, Any]:
    """What the figures were measured on (no host names, no paths)."""
    import google.protobuf
    import grpc

    return {
        "nproc": nproc(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "os": f"{platform.system()} {platform.release()}",
    }


def run_section(name: str, settings: Settings) -> dict[str, Any]:
    """Run one section, timing it; a crash becomes an ``error`` entry, not an abort."""
    print(f"\n== {name} ==", flush=True)
    start = time.perf_counter()
    try:
        result = SECTIONS[name](settings)
    except Exception as exc:
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}", "rows": [], "targets": []}
    result["seconds"] = time.perf_counter() - start
    result["quick"] = settings.quick
    result["about"] = about(SECTIONS[name])
    print_section(name, result)
    return result


def about(fn: Callable[..., Any]) -> str:
    """A section's description: its module docstring, after the title line."""
    doc = sys.modules[fn.__module__].__doc__ or ""
    paragraphs = doc.strip().split("\n\n")
    return " ".join(" ".join(p.split()) for p in paragraphs[1:] if not p.startswith(" "))


def print_section(name: str, result: dict[str, Any]) -> None:
    if "error" in result:
        print(f"{name}: FAILED TO RUN: {result['error']}")
        return
    if result["rows"]:
        print(text_table(result["rows"], [tuple(c) for c in result["columns"]]))
    for note in result.get("notes", []):
        print(f"  note: {note}")
    for t in result.get("targets", []):
        print(
            f"  target: {t['name']}: {format_cell(t['value'], '.3f')} {t['unit']} "
            f"(limit {t['limit']:g}) {verdict(t['pass'])}"
        )
    print(f"  ({result['seconds']:.1f} s)", flush=True)


def verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "not judged"}[passed]


def load(path: Path) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())
    return {"sections": {}}


def _clean(value: Any) -> Any:
    """NaN is not JSON: store it as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _restore(value: Any) -> Any:
    """null back to NaN for numbers the report formats (tables show '-')."""
    if isinstance(value, dict):
        return {
            k: (math.nan if v is None and k != "pass" else _restore(v)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_restore(v) for v in value]
    return value


def save(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(_clean(results), indent=2, ensure_ascii=False) + "\n")


def summary(results: dict[str, Any], names: Sequence[str]) -> None:
    print("\n== targets ==")
    for name in names:
        section = results["sections"][name]
        if "error" in section:
            print(f"  {name}: did not run ({section['error']})")
        for t in section.get("targets", []):
            print(
                f"  {verdict(t['pass']):10s} {t['name']}: {format_cell(t['value'], '.3f')} "
                f"{t['unit']} (limit {t['limit']:g})"
            )


def write_readme(path: Path) -> None:
    results = _restore(load(path))
    if not results["sections"]:
        raise SystemExit(f"{path.name} has no results yet: run the benchmarks first")
    for name, section in results["sections"].items():
        if name in SECTIONS:  # the description as the code says it now, not as it was
            section["about"] = about(SECTIONS[name])
    report.write_readme(results, README)
    drew = report.write_plot(results, PLOT)
    print(f"wrote {README.name}" + (f" and {PLOT.name}" if drew else " (no latency rows: no plot)"))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="crilab benchmarks (make bench)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    parser.add_argument(
        "--only",
        action="append",
        choices=list(SECTIONS),
        metavar="SECTION",
        help=f"run only this section (repeatable): {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--write-readme",
        action="store_true",
        help="write README.md and latency.png from results.json (alone: without running)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        help="results file (default: results.json, or results-quick.json with --quick)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    path = args.json or (QUICK_RESULTS if args.quick else RESULTS)
    if args.write_readme and not args.only and not args.quick:
        write_readme(path)
        return 0
    settings = Settings(quick=args.quick)
    names = args.only or list(SECTIONS)
    results = load(path)
    results["machine"] = machine()
    started = time.perf_counter()
    for name in names:
        results["sections"][name] = run_section(name, settings)
        results["updated"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        save(results, path)  # after every section: an interrupted run keeps what it measured
    results["sections"] = {n: results["sections"][n] for n in SECTIONS if n in results["sections"]}
    save(results, path)
    summary(results, names)
    print(f"\nwrote {path.name} ({time.perf_counter() - started:.0f} s in all)")
    if args.write_readme or not (args.only or args.quick):
        write_readme(path)
    return 1 if any("error" in results["sections"][n] for n in names) else 0


if __name__ == "__main__":
    sys.exit(main())
