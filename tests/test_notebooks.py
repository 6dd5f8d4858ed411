"""Every notebook in notebooks/, run in a fresh kernel as a learner would run it.

For each ``notebooks/*.ipynb`` (a new notebook is picked up by the glob):

* it is committed without outputs or execution counts;
* its exercise cells (metadata ``{"crilab": {"exercise": ID}}``) and check cells
  (``{"crilab": {"check": ID}}``) match the exercises registered in
  ``crilab.exercises.nbNN``;
* run as shipped, top to bottom, it raises nothing and every check says "Not solved yet";
  run again in the same kernel, it still raises nothing and every cell that printed
  ``serving on <endpoint>`` (the convention for a cell that starts a server) does so again;
* run with ``solution_source(ID)`` in each exercise cell, every check says "Solved";
* the outputs hold the strings listed for it in ``EXPECT`` (what the notebook is about);
* once its kernel has shut down, no unix socket it printed (``unix:///...``) is left;
* it reads as ``shared/NOTEBOOKS.md`` asks, where that is objective (``test_shape_*``, not
  slow: no kernel): a title with What you will learn (3-5 bullets), Before you start and
  Time; numbered sections; one import cell, the first code cell, that imports crilab's
  public face only; short code cells; each exercise cell followed by its check; bold
  **Try it** prompts; a Recap and a Going further that names the next notebook.

Per-notebook expectations live in ``EXPECT``; a notebook without an entry gets ``Expect()``.
Execution times are recorded as the ``execution_seconds`` property and printed at the end
of the session.
"""

from __future__ import annotations

import ast
import copy
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager
from nbclient import NotebookClient

from crilab.exercises import exercise_ids, solution_source

from .conftest import ROOT

#: The tests that execute notebooks are part of ``make test``; ``-m "not slow"`` leaves them
#: out of a quick local run (the ``test_shape_*`` ones only read the files, and stay in).
slow = pytest.mark.slow

NOTEBOOKS = ROOT / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))


@dataclass(frozen=True)
class Expect:
    """What a notebook's outputs must show, beyond running without error."""

    #: Strings that appear in the outputs, run as shipped and run solved.
    outputs: tuple[str, ...] = ()
    #: At least this many exercises (NOTEBOOKS.md: every notebook has some).
    min_exercises: int = 1
    #: At least this many unix sockets printed (servers the notebook started).
    min_sockets: int = 1
    #: Seconds one cell may take.
    cell_timeout: int = 120


EXPECT: dict[str, Expect] = {
    "01-grpc-basics": Expect(
        outputs=(
            "5 bytes: 0a 03 41 64 61",  # HelloRequest(name="Ada") on the wire
            "attempt=150  -> 20 96 01",  # a varint
            "('attempt', 4, 1)",  # field numbers
            "name: '' | still holds: b'\\x12\\x03Ada'",  # renumbering breaks decoding
            "rpc SayHelloBidiStream",  # the service in the .proto
            "helloworld_pb2_grpc.py",  # crilab gen --out
            "GreeterStub",
            'message: "Hello, Ada!"',
            "code:    StatusCode.INVALID_ARGUMENT",
            "details: HelloRequest.name is empty",
            "StatusCode.DEADLINE_EXCEEDED after",  # the time printed depends on the load
            "trailing metadata: ()",
        ),
        min_exercises=2,
    ),
    "02-helloworld": Expect(
        outputs=(
            "SayHelloStreamReply  _UnaryStreamMultiCallable",
            "HelloReply -> Hello, Ada!",
            "first: Hello #1, Ada!",
            "then:  Hello #3, Ada!",
            "again: [] | status: StatusCode.OK",
            "Hello, Grace!",  # the bidi conversation
            "Hello, Ada! (over TCP)",
            "EndpointError: cannot listen on tcp://127.0.0.1:",
            ":path: /helloworld.Greeter/SayHello",  # the request HEADERS, through the wiretap
            "00 00 00 00 05  gRPC's prefix: compressed=0, length=5",  # a DATA frame
            "grpc-status: 3",  # the trailers of the failing call
        ),
        min_exercises=3,
        min_sockets=1,
    ),
    "03-cri-tour": Expect(
        outputs=(
            "RuntimeService | `Version` | VersionRequest → VersionResponse | unary",
            "`GetContainerEvents` | GetEventsRequest → ContainerEventResponse | server streaming",
            "RuntimeService | server streaming | 6",
            "a socket: True | mode: 0o600",
            "RuntimeUnavailable",  # a wrong endpoint, on purpose
            "there is no socket at /run/nothing.sock",
            "runtime_api_version | `v1`",
            "first call: Version",
            "all calls:  ['Version']",
            "RuntimeReady | True",
            "grpc.reflection.v1alpha.ServerReflection",
            "the same names: True",
            "--image-endpoint unix://",  # the crictl line for the fake
            "StatusCode.NOT_FOUND |",  # PodSandboxStatus of an unknown ID
            "inspectp ffffffff",
            "`:path /runtime.v1.RuntimeService/Version`",  # the handshake, through the wiretap
            "runtime.v1.VersionRequest `{'version': 'v1'}`",
        ),
        min_exercises=3,
    ),
    "04-pod-lifecycle": Expect(
        outputs=(
            "SANDBOX_READY",
            "container | app | CONTAINER_CREATED",
            "container | app | CONTAINER_RUNNING",
            "exit code: 3",  # ExecSync: a failed command, an OK call
            "stdout F hello from app",  # the CRI log format
            "container | app | CONTAINER_EXITED | 137 (Error)",
            "PullImage calls so far: 0",  # IfNotPresent
            "RunPodSandbox → ImageStatus → ImageStatus → CreateContainer → StartContainer → "
            "ExecSync → StopContainer → RemoveContainer → StopPodSandbox → RemovePodSandbox",
            "SANDBOX_NOTREADY",
            "CONTAINER_EXITED | exit code: 0 | reason: Completed",
            'data-state="REMOVED" data-current="true"',
            "StartContainer on a running container: FAILED_PRECONDITION",
            "CreateContainer with a name already taken: ALREADY_EXISTS",
            "CreateContainer with an image the node lacks: NOT_FOUND",
            "ExecSync in a CREATED container: FAILED_PRECONDITION",
            "ContainerStatus of a removed container: NOT_FOUND",
            "RemoveContainer of a removed container: OK",
            "container | sleeper | CONTAINER_EXITED | 137 (Error)",
            "CreateContainer in a stopped pod: NOT_FOUND",
            "LifecyclePanel(",
            "CallLog(",
        ),
        min_exercises=3,
    ),
    "05-latency": Expect(
        outputs=(
            "the slowest call took",
            "label | n | errors | p50_ms | p99_ms | calls_per_s | ratio_p50",
            "Version + 5 ms | 100 | 0 |",
            "UNAVAILABLE",
            "of 200 calls",
            "StatusCode.DEADLINE_EXCEEDED after",
            "recorded DEADLINE_EXCEEDED",
            "a reply that nobody read: crilab-fake",
            "UNAVAILABLE           20 of 200 calls",  # seeded faults: the same counts every run
            "RESOURCE_EXHAUSTED     9 of 200 calls",
            "errors: {'DEADLINE_EXCEEDED'",
            "16 caller(s) | 300 |",
            "by Little's law",
            "in-process, 1 caller(s) |",  # the fake in this kernel and in a process of its own
            "own process, 8 caller(s) |",
            "ms of this kernel's CPU per call",
            "stopped (exit code 0) on unix://",  # the clean-up cell stopped it, cleanly
            "serving on tcp://127.0.0.1:",
            "TCP 127.0.0.1, run 3",
        ),
        min_exercises=3,
    ),
    "06-mini-kubelet": Expect(
        outputs=(
            "did:   ran pod web; started web/app attempt 0",
            "calls: ListPodSandbox → RunPodSandbox → ListContainers → ImageStatus → "
            "CreateContainer → StartContainer",
            "did:   nothing, the node already matches",
            "web | app | 0 | CONTAINER_RUNNING |",
            "web | app | 0 | CONTAINER_EXITED | 137 (Error)",
            "attempt 0 exited with 1 (Error)",
            "did:   started job/task attempt 2",
            "job | task | 1 | CONTAINER_EXITED | 1 (Error)",
            "did:   removed pod web",
            "0 pod(s) on the node, 0 of them ours",  # lab.cleanup(), on the fake
            "ListContainers calls saw",
            "CONTAINER_STOPPED_EVENT",
            "ended CANCELLED",
            "GetContainerEvents | 1 |",
        ),
        min_exercises=2,
    ),
}

_SOCKET = re.compile(r"unix://(/[^\s'\"<>()]+)")


@dataclass
class Run:
    """One kernel's execution of a notebook: outputs per pass, time, sockets left."""

    passes: list[nbformat.NotebookNode]
    #: The first pass over the cells; ``total`` adds kernel start, a second pass, shutdown.
    seconds: float
    total: float
    sockets: list[str] = field(default_factory=list)
    left_behind: list[str] = field(default_factory=list)


class _Times:
    """Prints every notebook's execution time at the end of the session."""

    def __init__(self) -> None:
        self.runs: dict[str, Run] = {}

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.runs:
            terminalreporter.write_sep("-", "notebook execution times")
            for name, run in sorted(self.runs.items()):
                terminalreporter.write_line(
                    f"{name}: cells {run.seconds:.1f} s "
                    f"(with kernel start, {len(run.passes)} pass(es), shutdown: {run.total:.1f} s)"
                )


_TIMES = _Times()
_RUNS: dict[tuple[str, bool], Run | BaseException] = {}


def expect(path: Path) -> Expect:
    return EXPECT.get(path.stem, Expect())


def text_of(cell) -> str:
    """Everything a code cell showed, as text (streams, every data format, errors).

    Each stream is joined back whole: a line printed to stdout can arrive in several
    pieces when something else (a grpc log line on stderr) comes in between.
    """
    streams: dict[str, str] = {}
    parts: list[str] = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            streams[output.name] = streams.get(output.name, "") + output.text
        elif output.output_type == "error":
            parts.append(f"{output.ename}: {output.evalue}")
        else:
            parts.extend(str(value) for value in output.get("data", {}).values())
    return "\n".join([*streams.values(), *parts])


def tagged(nb, key: str) -> list[tuple[int, str]]:
    """(index, exercise id) of the cells whose ``crilab`` metadata has ``key``."""
    return [
        (i, cell.metadata["crilab"][key])
        for i, cell in enumerate(nb.cells)
        if key in cell.metadata.get("crilab", {})
    ]


def execute(path: Path, *, solved: bool) -> Run:
    """Run a notebook in a fresh kernel (twice as shipped, once solved); cached per session."""
    key = (path.name, solved)
    if key not in _RUNS:
        try:
            _RUNS[key] = _execute(path, solved=solved)
        except BaseException as exc:
            _RUNS[key] = exc
    result = _RUNS[key]
    if isinstance(result, BaseException):
        raise result
    return result


def _execute(path: Path, *, solved: bool) -> Run:
    nb = nbformat.read(path, as_version=4)
    if solved:
        for index, exercise_id in tagged(nb, "exercise"):
            nb.cells[index].source = solution_source(exercise_id)
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=expect(path).cell_timeout,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    passes, seconds = [], []
    begun = time.perf_counter()
    with client.setup_kernel():
        for _ in range(1 if solved else 2):
            started = time.perf_counter()
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
            seconds.append(time.perf_counter() - started)
            passes.append(copy.deepcopy(nb))
    # The kernel has shut down: its servers must have removed their sockets.
    run = Run(passes, seconds[0], time.perf_counter() - begun)
    for done in passes:
        for cell in done.cells:
            run.sockets += _SOCKET.findall(text_of(cell))
    run.left_behind = sorted({p for p in run.sockets if os.path.exists(p)})
    _TIMES.runs[f"{path.name} ({'solved' if solved else 'as shipped'})"] = run
    return run


@pytest.fixture(autouse=True)
def _print_times_at_the_end(pytestconfig):
    if not pytestconfig.pluginmanager.is_registered(_TIMES):
        pytestconfig.pluginmanager.register(_TIMES, "crilab-notebook-times")


@pytest.fixture
def run_notebook(record_property):
    """``run_notebook(path, solved=...)``: the cached run, its time recorded on the test."""

    def run(path: Path, *, solved: bool) -> Run:
        result = execute(path, solved=solved)
        record_property("execution_seconds", round(result.seconds, 2))
        return result

    return run


notebooks = pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])


def test_there_are_notebooks() -> None:
    assert PATHS, f"no notebooks in {NOTEBOOKS}"


@notebooks
def test_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"cells {dirty} have outputs or execution counts: clear them"
    text = path.read_text()
    for local in {str(ROOT), str(Path.home())} - {"/"}:
        assert local not in text, f"{local}: an absolute path of this machine"


@notebooks
def test_exercise_and_check_cells_match_the_registered_exercises(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    exercises = [i for _, i in tagged(nb, "exercise")]
    checks = [i for _, i in tagged(nb, "check")]
    registered = exercise_ids(path.name[:2])
    assert len(exercises) >= expect(path).min_exercises
    assert sorted(exercises) == sorted(checks) == registered, (exercises, checks, registered)
    for index, exercise_id in tagged(nb, "check"):
        assert f'check("{exercise_id}"' in nb.cells[index].source


def _statuses(run_nb) -> list[tuple[str, str]]:
    """(exercise id, 'solved' | 'not solved' | 'no feedback') of every check cell."""
    found = []
    for index, exercise_id in tagged(run_nb, "check"):
        shown = text_of(run_nb.cells[index])
        if "data-solved='true'" in shown and shown.count("data-solved=") == 1:
            found.append((exercise_id, "solved"))
        elif "data-solved='false'" in shown and "Not solved yet" in shown:
            found.append((exercise_id, "not solved"))
        else:
            found.append((exercise_id, "no feedback"))
    return found


@slow
@notebooks
def test_runs_as_shipped_and_every_check_says_not_solved(path: Path, run_notebook) -> None:
    run = run_notebook(path, solved=False)
    statuses = _statuses(run.passes[0])
    assert statuses and all(status == "not solved" for _, status in statuses), statuses


@slow
@notebooks
def test_reference_solutions_solve_every_exercise(path: Path, run_notebook) -> None:
    run = run_notebook(path, solved=True)
    statuses = _statuses(run.passes[0])
    assert statuses and all(status == "solved" for _, status in statuses), statuses


@slow
@notebooks
@pytest.mark.parametrize("solved", [False, True], ids=["as-shipped", "solved"])
def test_key_outputs_appear(path: Path, solved: bool) -> None:
    shown = "\n".join(text_of(cell) for cell in execute(path, solved=solved).passes[0].cells)
    missing = [s for s in expect(path).outputs if s not in shown]
    assert not missing, f"not in the outputs: {missing}"


@slow
@notebooks
def test_running_every_cell_twice_in_one_kernel_works(path: Path) -> None:
    first, second = execute(path, solved=False).passes
    for index, cell in enumerate(first.cells):
        if cell.cell_type == "code" and "serving on" in text_of(cell):
            again = text_of(second.cells[index])
            assert "serving on" in again, f"cell {index} did not start its server again: {again}"
            assert "in use" not in again.lower() and "already serving" not in again
    shown = "\n".join(text_of(cell) for cell in second.cells)
    missing = [s for s in expect(path).outputs if s not in shown]
    assert not missing, f"not in the outputs of the second run: {missing}"
    assert _statuses(second) == _statuses(first)


@slow
@notebooks
@pytest.mark.parametrize("solved", [False, True], ids=["as-shipped", "solved"])
def test_no_socket_is_left_after_the_kernel_shuts_down(path: Path, solved: bool) -> None:
    run = execute(path, solved=solved)
    assert len(set(run.sockets)) >= expect(path).min_sockets, run.sockets
    assert not run.left_behind, f"sockets left after the kernel exited: {run.left_behind}"


# -- the shape of a notebook (NOTEBOOKS.md), read from the file: no kernel -----------------

#: What a notebook may import from crilab: its public face. ``crilab.runtime`` is the fake's
#: inside (DESIGN.md: no notebook reaches into it); the fake's features are reached through
#: the ``FakeRuntime`` object instead (``lab.runtime.inject_latency(...)``).
PUBLIC_MODULES = frozenset(
    {"crilab"}
    | {
        f"crilab.{name}"
        for name in (
            "builders",
            "exercises",
            "helloworld",
            "latency",
            "notebook",
            "stubs",
            "widgets",
            "wiretap",
        )
    }
)
#: Names a notebook may read as ``crilab.NAME``: the lazy public names and the modules above.
PUBLIC_NAMES = frozenset(__import__("crilab").__all__) | {
    m.split(".", 1)[1] for m in PUBLIC_MODULES if "." in m
}
#: Lines a code cell may have (NOTEBOOKS.md: "a short code cell (about 10 lines at most)");
#: the import cell and the learner's exercise cells are exempt.
MAX_CODE_LINES = 10
#: Headings a notebook may have besides its numbered sections.
UNNUMBERED = ("Setup", "Clean up", "Recap", "Going further")

_IPYTHON = TransformerManager()


def _code_cells(nb) -> list[tuple[int, nbformat.NotebookNode]]:
    return [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]


def _tree(cell) -> ast.Module:
    """A code cell as Python (``!shell`` and ``%magic`` lines turned into calls first)."""
    return ast.parse(_IPYTHON.transform_cell(cell.source))


def _imports(tree: ast.AST) -> list[str]:
    """Every module an import statement names, anywhere in the tree (functions included)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append("." * node.level + (node.module or ""))
            if node.module == "crilab":
                found += [f"crilab.{alias.name}" for alias in node.names]
    return found


def _markdown(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def _bullets(text: str, after: str, before: str) -> list[str]:
    part = text.split(after, 1)[1].split(before, 1)[0]
    return [line for line in part.splitlines() if line.startswith("- ")]


@notebooks
def test_shape_imports_only_crilabs_public_face(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    private = []
    for index, cell in _code_cells(nb):
        tree = _tree(cell)
        for module in _imports(tree):
            if module.startswith(".") or module.split(".")[0] != "crilab":
                continue
            if module not in PUBLIC_MODULES and module.rsplit(".", 1)[-1] not in PUBLIC_NAMES:
                private.append((index, f"import {module}"))
        for node in ast.walk(tree):
            is_crilab = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            if is_crilab and node.value.id == "crilab" and node.attr not in PUBLIC_NAMES:
                private.append((index, f"crilab.{node.attr}"))
        if re.search(r"\bcrilab\.runtime\b", cell.source):
            private.append((index, "crilab.runtime"))
    assert not private, f"(cell, name) outside crilab's public face: {sorted(set(private))}"


@notebooks
def test_shape_one_import_cell_at_the_top(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    cells = _code_cells(nb)
    first, import_cell = cells[0]
    assert first <= 2, f"the import cell is cell {first}: put it right after the title"
    at_top = _imports(_tree(import_cell))
    assert "crilab" in {m.split(".")[0] for m in at_top}, "the first code cell imports crilab"
    elsewhere = [(i, _imports(_tree(c))) for i, c in cells[1:]]
    elsewhere = [(i, found) for i, found in elsewhere if found]
    assert not elsewhere, f"imports outside the first code cell (cell, modules): {elsewhere}"


@notebooks
def test_shape_title_what_you_will_learn_before_you_start_and_time(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    head = nb.cells[0]
    assert head.cell_type == "markdown" and head.source.startswith(f"# {path.name[:2]} · ")
    for part in ("**What you will learn**", "**Before you start**", "**Time**"):
        assert part in head.source, f"the first cell has no {part}"
    learn = _bullets(head.source, "**What you will learn**", "**Before you start**")
    assert 3 <= len(learn) <= 5, f"{len(learn)} things to learn; NOTEBOOKS.md asks for 3-5"
    assert re.search(r"\*\*Time\*\*: about \d+ minutes", head.source), "an estimate, in minutes"


@notebooks
def test_shape_numbered_sections_then_recap_and_going_further(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    headings = re.findall(r"^## (.+)$", _markdown(nb), flags=re.MULTILINE)
    numbered = [int(m.group(1)) for h in headings if (m := re.match(r"(\d+)\. \S", h))]
    assert numbered == list(range(1, len(numbered) + 1)) and len(numbered) >= 3, headings
    others = [h for h in headings if not re.match(r"\d+\. ", h)]
    assert set(others) <= set(UNNUMBERED), f"unnumbered sections: {others}"
    assert headings[-2:] == ["Recap", "Going further"], headings[-2:]
    ending = _markdown(nb).rsplit("## Recap", 1)[1]
    recap = _bullets(ending, "\n", "## Going further")
    assert 3 <= len(recap) <= 5, f"{len(recap)} recap bullets; NOTEBOOKS.md asks for 3-5"
    further = ending.split("## Going further", 1)[1]
    assert "https://" in further, "Going further points at upstream docs"
    following = [p for p in PATHS if p.name > path.name]
    if following:
        assert f"**{following[0].name}**" in further, f"Going further names {following[0].name}"
    else:
        assert "last notebook" in further


@notebooks
def test_shape_code_cells_are_short(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    cells = _code_cells(nb)
    long = [
        (index, len(cell.source.splitlines()))
        for index, cell in cells[1:]  # the import cell is a list, not a wall of code
        if "exercise" not in cell.metadata.get("crilab", {})
        and len(cell.source.splitlines()) > MAX_CODE_LINES
    ]
    assert not long, f"(cell, lines) over {MAX_CODE_LINES} lines, to split with prose: {long}"


@notebooks
def test_shape_every_exercise_cell_is_followed_by_its_check(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    cells = _code_cells(nb)
    for position, (index, cell) in enumerate(cells):
        exercise_id = cell.metadata.get("crilab", {}).get("exercise")
        if exercise_id is None:
            continue
        assert f"# Exercise {exercise_id}" in cell.source, f"cell {index}: which exercise?"
        marked = re.search(r"# (your (answer|code) here|replace the \.\.\.)", cell.source)
        assert marked, f"cell {index}: no marked place for the answer"
        assert position + 1 < len(cells), f"{exercise_id}: no cell after the exercise"
        following = cells[position + 1][1].metadata.get("crilab", {})
        assert following.get("check") == exercise_id, f"{exercise_id}: not followed by its check"


@notebooks
def test_shape_try_it_prompts_are_there_and_bold(path: Path) -> None:
    text = _markdown(nbformat.read(path, as_version=4))
    prompts = re.findall(r"\*\*try it\*\*", text, flags=re.IGNORECASE)
    plain = [
        m.start()
        for m in re.finditer(r"(?i)try it", text)
        if text[m.start() - 2 : m.start()] != "**"
    ]
    assert len(prompts) >= 3, f"{len(prompts)} **Try it** prompts: NOTEBOOKS.md wants them"
    assert not plain, f"'Try it' not in bold at {[text[i - 30 : i + 30] for i in plain]}"
