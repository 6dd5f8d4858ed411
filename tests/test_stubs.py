"""Stub generation: cold cache, warm cache, edited proto, broken proto, many processes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crilab import stubs

from .conftest import ROOT, run_python

WHERE = "from crilab.stubs import api_pb2, api_pb2_grpc; print(api_pb2.__file__)"


@pytest.fixture
def cache(tmp_path: Path) -> dict[str, str]:
    return {"CRILAB_CACHE_DIR": str(tmp_path / "cache")}


@pytest.fixture
def protos(tmp_path: Path) -> Path:
    """A private copy of proto/ that a test may edit, as a learner would."""
    copy = tmp_path / "proto"
    shutil.copytree(ROOT / "proto", copy)
    return copy


def test_cold_cache_generates_all_three_files(cache: dict[str, str]) -> None:
    done = run_python(WHERE, env=cache)
    assert done.returncode == 0, done.stderr
    generated = Path(done.stdout.strip()).parent
    assert generated.parent == Path(cache["CRILAB_CACHE_DIR"])
    names = sorted(p.name for p in generated.iterdir())
    assert names == ["api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py"]
    assert "class RuntimeServiceStub" in (generated / "api_pb2_grpc.py").read_text()
    assert "class PodSandboxConfig" in (generated / "api_pb2.pyi").read_text()


def test_warm_cache_reuses_the_stubs(cache: dict[str, str]) -> None:
    first = run_python(WHERE, env=cache)
    generated = Path(first.stdout.strip())
    before = generated.stat().st_mtime_ns
    second = run_python(WHERE, env=cache)
    assert second.returncode == 0, second.stderr
    assert Path(second.stdout.strip()) == generated
    assert generated.stat().st_mtime_ns == before, "a warm cache must not regenerate"


def test_edited_proto_is_regenerated_in_the_next_process(
    cache: dict[str, str], protos: Path
) -> None:
    env = {**cache, "CRILAB_PROTO_DIR": str(protos)}
    probe = (
        "from crilab.stubs import helloworld_pb2 as m;"
        "print(sorted(m.HelloRequest.DESCRIPTOR.fields_by_name))"
    )
    assert run_python(probe, env=env).stdout.strip() == "['name']"
    source = protos / "helloworld.proto"
    source.write_text(
        source.read_text().replace("string name = 1;", "string name = 1;\n  string greeting = 2;")
    )
    after = run_python(probe, env=env)
    assert after.returncode == 0, after.stderr
    assert after.stdout.strip() == "['greeting', 'name']"


def test_edited_proto_in_the_same_process_says_restart(cache: dict[str, str], protos: Path) -> None:
    script = f"""
from pathlib import Path
from crilab import stubs
stubs.load("helloworld_pb2")
p = Path({str(protos / "helloworld.proto")!r})
p.write_text(p.read_text().replace("string name = 1;", "string name = 1; string x = 2;"))
try:
    stubs.load("helloworld_pb2")
except stubs.ProtoChangedError as exc:
    print("CHANGED:", exc)
"""
    done = run_python(script, env={**cache, "CRILAB_PROTO_DIR": str(protos)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("CHANGED:")
    assert "restart the kernel" in done.stdout


def test_broken_proto_reports_file_and_line(cache: dict[str, str], protos: Path) -> None:
    (protos / "broken.proto").write_text(
        'syntax = "proto3";\npackage b;\nmessage M {\n  strin name = 1;\n}\n'
    )
    env = {**cache, "CRILAB_PROTO_DIR": str(protos)}
    done = subprocess.run(
        [sys.executable, "-m", "crilab", "gen", "--check", "--proto", "broken"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, **env},
        check=False,
    )
    assert done.returncode == 1
    assert "broken.proto:4:" in done.stderr, done.stderr
    assert "strin" in done.stderr
    assert "Traceback" not in done.stderr
    imported = run_python("from crilab.stubs import broken_pb2", env=env)
    assert "ProtoError" in imported.stderr and "broken.proto:4:" in imported.stderr


def test_unknown_proto_name_lists_the_known_ones() -> None:
    with pytest.raises(ModuleNotFoundError, match="known: api, helloworld"):
        stubs.load("nosuch_pb2")


def test_many_processes_starting_at_once_see_whole_stubs(cache: dict[str, str]) -> None:
    code = "from crilab.stubs import api_pb2_grpc; print(api_pb2_grpc.RuntimeServiceStub)"
    env = {**__import__("os").environ, **cache}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(16)
    ]
    results = [(*p.communicate(timeout=120), p.returncode) for p in procs]
    failures = [(out, err) for out, err, rc in results if rc != 0]
    assert not failures, failures[0]
    generated = [p for p in Path(cache["CRILAB_CACHE_DIR"]).iterdir() if p.name.startswith("api-")]
    assert len(generated) == 1, "exactly one finished cache entry, no leftovers"
    leftovers = [p for p in Path(cache["CRILAB_CACHE_DIR"]).iterdir() if p.name.startswith(".")]
    assert not leftovers


def test_gen_out_writes_plain_importable_stubs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "crilab", "gen", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    check = run_python(
        "import api_pb2, api_pb2_grpc, helloworld_pb2_grpc;"
        "print(api_pb2.VersionRequest(version='v1'), api_pb2_grpc.RuntimeServiceStub.__name__)",
        cwd=out,
    )
    assert check.returncode == 0, check.stderr
    assert "RuntimeServiceStub" in check.stdout


def test_cli_help_lists_subcommands() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "crilab", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    for command in ("gen", "serve"):
        assert command in done.stdout
