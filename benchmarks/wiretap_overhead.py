"""What a wiretap costs: Version through the tap vs direct, same fake runtime.

    python benchmarks/wiretap_overhead.py          # prints a small table
    from wiretap_overhead import run; run()        # list[dict], for a benchmark runner

Both clients are warmed up first, then the two are measured in alternating
blocks so that drift (CPU frequency, other load) hits both alike. The tap
forwards at once and decodes later (when read, or when traffic pauses), so the
latency cost is one extra unix-socket hop each way; the decoding cost is
measured separately, per call, after the run.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import crilab
from crilab.latency import percentile
from crilab.wiretap import wiretap

N = 2000
WARMUP = 200
BLOCK = 100
QUICK_N = 200


def _timed(call: Callable[[], object], count: int, into: list[float]) -> None:
    for _ in range(count):
        started = time.perf_counter()
        call()
        into.append(time.perf_counter() - started)


def run(n: int = N, *, quick: bool = False) -> list[dict]:
    """p50/p99 (ms) of ``Version`` direct and through a tap; the tap row has the ratios.

    ``quick`` (the benchmark runner's ``--quick``) measures 200 calls instead of ``n``.
    """
    if quick:
        n = min(n, QUICK_N)
    with crilab.FakeRuntime(history=16) as rt, wiretap(rt.endpoint, capacity=1000) as tap:
        direct = crilab.connect(rt.endpoint)
        tapped = crilab.connect(tap.endpoint)
        try:
            samples: dict[str, list[float]] = {"direct": [], "wiretap": []}
            clients = {"direct": direct, "wiretap": tapped}
            for client in clients.values():
                _timed(client.version, WARMUP, [])
            done = 0
            while done < n:
                block = min(BLOCK, n - done)
                for name, client in clients.items():
                    _timed(client.version, block, samples[name])
                done += block
            # The tap defers decoding off the hot path; what it costs is paid here.
            started = time.perf_counter()
            tap.sync(timeout=120)
            decode_seconds = time.perf_counter() - started
            captured = len(tap.calls)
        finally:
            direct.close()
            tapped.close()
    rows = []
    for name, values in samples.items():
        rows.append(
            {
                "benchmark": "wiretap_overhead",
                "variant": name,
                "call": "Version",
                "n": len(values),
                "p50_ms": percentile(values, 50) * 1000,
                "p99_ms": percentile(values, 99) * 1000,
            }
        )
    base, tap_row = rows
    tap_row["ratio_p50"] = tap_row["p50_ms"] / base["p50_ms"]
    tap_row["ratio_p99"] = tap_row["p99_ms"] / base["p99_ms"]
    tap_row["calls_captured"] = captured
    through_tap = 1 + WARMUP + n  # connect()'s own Version, the warm-up, the measured calls
    tap_row["decode_ms_per_call"] = decode_seconds * 1000 / through_tap
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'Version x' + str(rows[0]['n']):<16}{'p50 ms':>10}{'p99 ms':>10}"]
    for row in rows:
        lines.append(f"{row['variant']:<16}{row['p50_ms']:>10.3f}{row['p99_ms']:>10.3f}")
    tap_row = rows[-1]
    lines.append(f"{'ratio':<16}{tap_row['ratio_p50']:>9.2f}x{tap_row['ratio_p99']:>9.2f}x")
    lines.append(
        f"decoding, deferred: {tap_row['decode_ms_per_call']:.3f} ms per call "
        f"({tap_row['calls_captured']} calls kept)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=N, help=f"calls per variant (default {N})")
    args = parser.parse_args()
    print(table(run(args.n)))


if __name__ == "__main__":
    main()
