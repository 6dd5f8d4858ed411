"""Stub generation: cold cache, warm cache, edited proto, broken proto, many processes.

And the ``crilab`` command itself (``gen``, ``serve``, ``tap``), run as a learner runs it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

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
    done = crilab_cli("gen", "--check", "--proto", "broken", env=env)
    assert done.returncode == 1
    assert "broken.proto:4:" in done.stderr, done.stderr
    assert "strin" in done.stderr
    assert "Traceback" not in done.stderr
    imported = run_python("from crilab.stubs import broken_pb2", env=env)
    assert "ProtoError" in imported.stderr and "broken.proto:4:" in imported.stderr


def test_unknown_proto_name_lists_the_known_ones() -> None:
    with pytest.raises(ModuleNotFoundError, match="known: api, control, helloworld"):
        stubs.load("nosuch_pb2")


def test_many_processes_starting_at_once_see_whole_stubs(cache: dict[str, str]) -> None:
    code = "from crilab.stubs import api_pb2_grpc; print(api_pb2_grpc.RuntimeServiceStub)"
    env = {**os.environ, **cache}
    assert not Path(cache["CRILAB_CACHE_DIR"]).exists(), "the race starts from a cold cache"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(30)  # a workshop's kernels, started at once
    ]
    results = [(*p.communicate(timeout=120), p.returncode) for p in procs]
    failures = [(out, err) for out, err, rc in results if rc != 0]
    assert not failures, failures[0]
    assert all("RuntimeServiceStub" in out for out, _, _ in results)
    generated = [p for p in Path(cache["CRILAB_CACHE_DIR"]).iterdir() if p.name.startswith("api-")]
    assert len(generated) == 1, "exactly one finished cache entry, no leftovers"
    leftovers = [p for p in Path(cache["CRILAB_CACHE_DIR"]).iterdir() if p.name.startswith(".")]
    assert not leftovers


def test_warm_cache_imports_both_protos_without_protoc(cache: dict[str, str]) -> None:
    pairs = "from crilab.stubs import api_pb2, api_pb2_grpc, helloworld_pb2, helloworld_pb2_grpc"
    assert run_python(pairs, env=cache).returncode == 0  # fills the cache
    root = Path(cache["CRILAB_CACHE_DIR"])
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    probe = f"""
import sys
from crilab import stubs
def no_protoc(*args, **kwargs):
    raise AssertionError("protoc ran on a warm cache")
stubs._run_protoc = no_protoc
{pairs}
print(api_pb2_grpc.RuntimeServiceStub.__name__, helloworld_pb2_grpc.GreeterStub.__name__)
print("grpc_tools.protoc" in sys.modules)
"""
    warm = run_python(probe, env=cache)
    assert warm.returncode == 0, warm.stderr
    assert warm.stdout.split() == ["RuntimeServiceStub", "GreeterStub", "False"]
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert after == before, "a warm import must not write to the cache"


def test_cache_key_changes_with_crilab_s_rewrite_of_the_stubs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = stubs._source("api").key
    monkeypatch.setattr(stubs, "_REWRITE_VERSION", stubs._REWRITE_VERSION + "-next")
    assert stubs._source("api").key != key, "stubs rewritten differently need a new cache entry"


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_stale_generation_folders_are_cleaned_but_young_ones_kept(
    cache: dict[str, str],
) -> None:
    root = Path(cache["CRILAB_CACHE_DIR"])
    root.mkdir()
    crashed = root / ".api-k2j4x9_q"  # what a process killed mid-generation leaves
    crashed.mkdir()
    (crashed / "api_pb2.py").write_text("# half written")
    _age(crashed, 3600)
    running = root / ".api-a1b2c3d4"  # another process generating right now
    running.mkdir()
    (root / "notes-by-hand").mkdir()
    _age(root / "notes-by-hand", 3600)
    done = run_python("from crilab.stubs import api_pb2", env=cache)
    assert done.returncode == 0, done.stderr
    assert not crashed.exists(), "a stale generation folder outlives the crash"
    assert running.is_dir(), "a generation under way must not be touched"
    assert (root / "notes-by-hand").is_dir()
    assert [p.name for p in root.glob("api-*")], "the stubs were generated"
    # a warm cache generates nothing, so `crilab gen --check` (postBuild, make install) cleans
    crashed.mkdir()
    _age(crashed, 3600)
    checked = crilab_cli("gen", "--check", env=cache)
    assert checked.returncode == 0, checked.stderr
    assert not crashed.exists()
    assert running.is_dir()


def test_broken_proto_in_a_kernel_shows_protoc_s_line_not_crilab_s_frames(
    tmp_path: Path, protos: Path
) -> None:
    """In Jupyter, a learner's mistake shows protoc's file:line, not a traceback through crilab."""
    source = protos / "helloworld.proto"
    good = source.read_text()
    broken = good.replace("string name = 1;", "strin name = 1;")
    line = next(i for i, text in enumerate(broken.splitlines(), 1) if "strin name" in text)
    source.write_text(broken)
    cells = [
        f"import os\nos.environ['CRILAB_PROTO_DIR'] = {str(protos)!r}\n"
        f"os.environ['CRILAB_CACHE_DIR'] = {str(tmp_path / 'cache')!r}",
        "from crilab.stubs import helloworld_pb2",  # the bad edit
        f"from pathlib import Path\nPath({str(source)!r}).write_text({good!r})\n"
        "from crilab.stubs import helloworld_pb2\nprint(helloworld_pb2.HelloRequest(name='Ada'))",
        f"Path({str(source)!r}).write_text({good.replace('string name = 1;', 'string name = 1; string x = 2;')!r})\n"  # noqa: E501
        "from crilab.stubs import helloworld_pb2",  # edited after the import: restart
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True).execute()
    outputs = [cell.outputs for cell in nb.cells]
    assert outputs[0] == []
    [error] = outputs[1]
    shown = "\n".join(error.traceback)
    assert error.ename == "ProtoError"
    assert f"helloworld.proto:{line}:" in shown, shown
    assert "strin" in shown
    assert "stubs.py" not in shown and "Traceback" not in shown, shown
    assert shown.startswith("ProtoError: protoc could not compile")
    assert [o.get("text", "") for o in outputs[2]] == ['name: "Ada"\n\n'], outputs[2]
    [changed] = outputs[3]
    shown = "\n".join(changed.traceback)
    assert changed.ename == "ProtoChangedError"
    assert "restart the kernel" in shown
    assert "stubs.py" not in shown and "Traceback" not in shown, shown


# -- the crilab command ---------------------------------------------------------------


def crilab_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m crilab ARGS`` in a fresh process, as a learner types it in a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "crilab", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_gen_out_writes_plain_importable_stubs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = crilab_cli("gen", "--out", str(out))
    assert done.returncode == 0, done.stderr
    check = run_python(
        "import api_pb2, api_pb2_grpc, helloworld_pb2_grpc;"
        "print(api_pb2.VersionRequest(version='v1'), api_pb2_grpc.RuntimeServiceStub.__name__)",
        cwd=out,
    )
    assert check.returncode == 0, check.stderr
    assert "RuntimeServiceStub" in check.stdout


@pytest.mark.parametrize(
    "how", [("--proto", "api", "helloworld"), ("--proto", "api", "--proto", "helloworld")]
)
def test_gen_takes_several_protos_after_one_flag_or_repeated(
    tmp_path: Path, cache: dict[str, str], how: tuple[str, ...]
) -> None:
    out = tmp_path / "out"
    done = crilab_cli("gen", *how, "--out", str(out), env=cache)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        f"{name}{suffix}"
        for name in ("api", "helloworld")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
    ]
    checked = crilab_cli("gen", "--check", *how, env=cache)
    assert checked.returncode == 0, checked.stderr
    assert [line.split()[0] for line in checked.stdout.splitlines()] == [
        "api.proto",
        "helloworld.proto",
    ]


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_gen_with_a_wrong_proto_dir_fails_and_says_so(
    tmp_path: Path, cache: dict[str, str], where: str
) -> None:
    protos = tmp_path / "protos"
    if where == "empty":
        protos.mkdir()
    out = tmp_path / "out"
    for args in (("--out", str(out)), ("--check",)):
        done = crilab_cli("gen", *args, env={**cache, "CRILAB_PROTO_DIR": str(protos)})
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert str(protos) in done.stderr and "CRILAB_PROTO_DIR" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not out.exists() or not list(out.iterdir())


def _first_line(proc: subprocess.Popen[str]) -> str:
    """The process's first stdout line (or fail, with its stderr, if it exits instead)."""
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline().strip()  # pytest-timeout guards against a hang
    assert line, f"exited {proc.wait()} before printing: {proc.stderr.read()}"
    return line


def test_tap_accepts_upstream_as_an_option(tmp_path: Path) -> None:
    from crilab import FakeRuntime, connect

    listen = f"unix://{tmp_path}/tap.sock"
    with FakeRuntime() as rt:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crilab", "tap", "--listen", listen, "--upstream", rt.endpoint],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert _first_line(proc) == listen
            with connect(listen) as client:
                assert client.version().runtime_api_version == "v1"
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "/runtime.v1.RuntimeService/Version OK" in err
    assert not (tmp_path / "tap.sock").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--capacity", "0", "unix:///nowhere.sock"), "keep at least 1 frame"),
        (("--capacity", "-5", "unix:///nowhere.sock"), "keep at least 1 frame"),
        (("--capacity", "many", "unix:///nowhere.sock"), "not a whole number"),
        ((), "say which server to tap"),
        (("unix:///a.sock", "--upstream", "unix:///b.sock"), "two upstreams given"),
    ],
)
def test_tap_rejects_bad_arguments_with_a_message(args: tuple[str, ...], says: str) -> None:
    done = crilab_cli("tap", *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


SUBCOMMANDS = {"ctl", "gen", "serve", "tap"}


def test_cli_help_lists_every_subcommand() -> None:
    from crilab.cli import build_parser

    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a.choices, dict)]
    assert set(sub.choices) == SUBCOMMANDS, "a new subcommand: add it here and to the README"
    done = crilab_cli("--help")
    assert done.returncode == 0
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("    ")}
    assert listed >= SUBCOMMANDS, done.stdout
    for command in sorted(SUBCOMMANDS):
        own = crilab_cli(command, "--help")
        assert own.returncode == 0, own.stderr
        assert own.stdout.startswith(f"usage: crilab {command}")
    readme = (ROOT / "README.md").read_text()
    for command in sorted(SUBCOMMANDS):
        assert f"crilab {command}" in readme, f"README never mentions `crilab {command}`"
