"""A workshop: 30 learners' kernels on one host, each with its own fake runtime.

Thirty separate processes (spawned, as a Jupyter host starts kernels; never forked with grpc
loaded) start a FakeRuntime each at the same moment, drive a pod lifecycle, and check that they
saw only their own state. Afterwards every socket must be gone.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import pytest

from .conftest import report_figure

LEARNERS = 30
pytestmark = pytest.mark.timeout(300)


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def learner(index: int, transport: str, barrier, results) -> None:
    """One kernel's work: start a runtime, wait for the others, run a lifecycle, stop."""
    try:
        import crilab
        from crilab.builders import container_config, pod_config

        before = _rss_kib()
        listen = "tcp://127.0.0.1:0" if transport == "tcp" else None
        rt = crilab.FakeRuntime(listen, images=["busybox"])
        client = crilab.connect(rt.endpoint)
        client.version()
        after = _rss_kib()
        barrier.wait(timeout=120)  # all thirty runtimes are up at once
        pod = client.run_pod_sandbox(pod_config(f"learner-{index}", uid=f"uid-{index}"))
        cid = client.create_container(pod, container_config("app", "busybox", ["sleep", "60"]))
        client.start_container(cid)
        out = client.exec_sync(cid, ["hostname"], timeout_seconds=5).stdout.decode().strip()
        pods = [p.metadata.name for p in client.list_pod_sandbox()]
        ctrs = [c.id for c in client.list_containers()]
        client.stop_container(cid)
        client.remove_pod_sandbox(pod)
        barrier.wait(timeout=120)  # nobody stops before everybody has looked
        client.close()
        rt.stop()
        results.put(
            {
                "index": index,
                "endpoint": rt.endpoint,
                "pods": pods,
                "containers": ctrs,
                "cid": cid,
                "hostname": out,
                "rss_kib": after - before,
            }
        )
    except BaseException as exc:  # report, never hang the barrier
        barrier.abort()
        results.put({"index": index, "error": f"{type(exc).__name__}: {exc}"})


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_thirty_kernels_each_with_a_private_runtime(
    transport: str, tmp_path, monkeypatch, record_property
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # one user's runtime dir, shared
    os.chmod(tmp_path, 0o700)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(LEARNERS)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=learner, args=(i, transport, barrier, results)) for i in range(LEARNERS)
    ]
    for p in procs:
        p.start()
    got = [results.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    errors = [r for r in got if "error" in r]
    assert not errors, errors[:3]
    assert sorted(r["index"] for r in got) == list(range(LEARNERS))
    for r in got:
        assert r["pods"] == [f"learner-{r['index']}"], "a learner saw another's pods"
        assert r["containers"] == [r["cid"]]
        assert r["hostname"] == f"learner-{r['index']}"
    endpoints = {r["endpoint"] for r in got}
    assert len(endpoints) == LEARNERS, "two runtimes shared an endpoint"
    if transport == "unix":
        for endpoint in endpoints:
            assert endpoint.startswith(f"unix://{tmp_path}/crilab/")
            assert not Path(endpoint.removeprefix("unix://")).exists()
        assert list((tmp_path / "crilab").iterdir()) == [], "sockets or dirs left behind"
    rss = sorted(r["rss_kib"] for r in got)
    median = rss[len(rss) // 2]
    report_figure(
        record_property,
        f"fake_runtime_rss_kib_median_{transport}",
        median,
        f"workshop ({LEARNERS} kernels, {transport}): a FakeRuntime adds {median / 1024:.1f} MiB "
        f"RSS to a kernel (median; range {rss[0] / 1024:.1f}-{rss[-1] / 1024:.1f} MiB)",
    )
