"""crilab.exercises: check never raises, explains wrong answers, and the solutions solve."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from crilab import exercises, helloworld
from crilab.exercises import (
    Feedback,
    check,
    exercise,
    exercise_ids,
    reveal,
    right,
    solution_source,
    wrong,
)
from crilab.exercises.nb05 import LATENCIES_MS
from crilab.stubs import api_pb2, helloworld_pb2, helloworld_pb2_grpc


@pytest.fixture
def registry(monkeypatch) -> None:
    """A private copy of the registry, so test exercises do not leak into others."""
    monkeypatch.setattr(exercises, "_REGISTRY", dict(exercises._REGISTRY))


class Measured:
    """What 05.ratio reads of a measurement (``latency.Samples``): its p50, in seconds."""

    def __init__(self, p50: float) -> None:
        self.p50 = p50


@pytest.fixture(scope="module")
def notebook() -> Iterator[dict[str, object]]:
    """The names the exercise cells of the notebooks can use, with a live Greeter."""
    with helloworld.serve() as server, helloworld.channel(server.endpoint.uri) as channel:
        yield {
            "api_pb2": api_pb2,
            "grpc": grpc,
            "helloworld_pb2": helloworld_pb2,
            "helloworld_pb2_grpc": helloworld_pb2_grpc,
            "stub": helloworld_pb2_grpc.GreeterStub(channel),
            "latencies_ms": list(LATENCIES_MS),  # 05's list, as its notebook cell defines it
            "base": Measured(0.0005),  # 05's baseline: a p50 of 0.5 ms
        }


#: The names each exercise's check is given, in the order its check cell passes them.
ANSWER = {
    "01.varint": ("answer",),
    "01.unavailable": ("code",),
    "02.stream": ("replies",),
    "02.bidi": ("hello_requests",),
    "02.data-frame": ("data_length",),
    "03.count": ("runtime_rpcs",),
    "03.server-streams": ("server_streams",),
    "03.first-call": ("first_call",),
    "04.killed-exit-code": ("killed_exit_code",),
    "04.stopped-state": ("stopped_state",),
    "04.start-sequence": ("start_sequence",),
    "05.p90": ("p90",),
    "05.ratio": ("ratio", "base"),
    "05.deadline-code": ("deadline_code",),
    "06.should-restart": ("should_restart",),
    "06.next-attempt": ("next_attempt",),
}


def test_the_notebooks_exercises_are_registered() -> None:
    assert exercise_ids("01") == ["01.unavailable", "01.varint"]
    assert exercise_ids("02") == ["02.bidi", "02.data-frame", "02.stream"]
    assert exercise_ids("03") == ["03.count", "03.first-call", "03.server-streams"]
    assert exercise_ids("04") == ["04.killed-exit-code", "04.start-sequence", "04.stopped-state"]
    assert exercise_ids("05") == ["05.deadline-code", "05.p90", "05.ratio"]
    assert exercise_ids("06") == ["06.next-attempt", "06.should-restart"]
    assert set(ANSWER) == set(exercise_ids())


@pytest.mark.parametrize("exercise_id", sorted(ANSWER))
def test_the_reference_solution_solves_it(exercise_id: str, notebook) -> None:
    scope = dict(notebook)
    exec(solution_source(exercise_id), scope)
    feedback = check(exercise_id, *(scope[name] for name in ANSWER[exercise_id]))
    assert feedback.solved, feedback
    assert str(feedback).startswith("Solved")
    assert "Solved" in feedback._repr_html_() and "Not solved" not in feedback._repr_html_()


@pytest.mark.parametrize("exercise_id", sorted(ANSWER))
@pytest.mark.parametrize("placeholder", [..., None])
def test_a_placeholder_is_not_solved_yet_with_the_hint(exercise_id: str, placeholder) -> None:
    feedback = check(exercise_id, placeholder)
    assert not feedback.solved
    assert str(feedback).startswith("Not solved yet")
    assert "Hint: " in feedback.text and "replace the ..." in feedback.text
    assert "Not solved yet" in feedback._repr_html_()


def test_no_answer_at_all_is_a_placeholder() -> None:
    assert "replace the ..." in check("01.varint").text


def test_a_function_whose_body_is_still_a_placeholder_is_not_solved_yet() -> None:
    def hello_requests(names): ...

    feedback = check("02.bidi", hello_requests)
    assert not feedback.solved and "returns None" in feedback.text and "Hint: " in feedback.text


def test_an_answer_that_raises_becomes_not_solved_yet() -> None:
    def hello_requests(names):
        raise ZeroDivisionError("learner bug")

    feedback = check("02.bidi", hello_requests)
    assert not feedback.solved
    assert "Your answer raised ZeroDivisionError: learner bug" in feedback.text
    assert "Hint: " in feedback.text


def test_an_answer_whose_repr_raises_does_not_break_check() -> None:
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no repr for you")

        def __eq__(self, other: object) -> bool:
            raise RuntimeError("no eq either")

        __hash__ = object.__hash__

    for exercise_id in ANSWER:
        feedback = check(exercise_id, Hostile())
        assert isinstance(feedback, Feedback) and not feedback.solved


def test_a_grpc_error_raised_by_an_answer_shows_its_code(notebook) -> None:
    stub = notebook["stub"]

    def hello_requests(names):
        yield helloworld_pb2.HelloRequest(name="x")
        stub.SayHello(helloworld_pb2.HelloRequest(), timeout=5)  # INVALID_ARGUMENT

    feedback = check("02.bidi", hello_requests)
    assert "INVALID_ARGUMENT" in feedback.text, feedback


def test_a_broken_checker_does_not_break_check(registry) -> None:
    @exercise("99.broken", title="Broken", hint="h", solution="answer = 1")
    def _(answer):
        return "not a verdict"

    feedback = check("99.broken", 1)
    assert not feedback.solved and "not right()/wrong()" in feedback.text


def test_an_unknown_exercise_is_not_solved_and_lists_the_known_ones() -> None:
    for exercise_id in ("99.nothing", "nonsense", 42):
        feedback = check(exercise_id, 1)
        assert not feedback.solved and "01.varint" in feedback.text


@pytest.mark.parametrize(
    ("answer", "explained"),
    [
        (b"\x10\x96\x01", "field 2"),  # wrong field number
        (b"\x0a\x02\x96\x01", "length-delimited"),  # wrong wire type
        (b"\x08\x96", "never ends"),  # truncated varint
        (b"\x08\x01\x96", "wrong order"),  # big-endian groups
        (b"\x96\x01", "the value alone"),  # no tag
        (b"\x08\x97\x01", "holds 151"),
        ("08 96 01", "bytes.fromhex"),
        (150, "value of the field"),
        ([8, 150, 1], "the right ones"),
    ],
)
def test_a_wrong_varint_is_explained(answer, explained: str) -> None:
    feedback = check("01.varint", answer)
    assert not feedback.solved
    assert explained in feedback.text, feedback.text


@pytest.mark.parametrize(
    ("code", "explained"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, "wait_for_ready"),
        (grpc.StatusCode.INVALID_ARGUMENT, "no server exists"),
        (grpc.StatusCode.OK, "succeeded"),
        (14, "err.code()"),
        ("a string", "not a status code"),
    ],
)
def test_a_wrong_status_code_is_explained(code, explained: str) -> None:
    feedback = check("01.unavailable", code)
    assert not feedback.solved and explained in feedback.text, feedback.text


def test_a_wrong_stream_answer_is_explained(notebook) -> None:
    stub = notebook["stub"]
    grace = helloworld_pb2.HelloRequest(name="Grace")
    cases = {
        "the stream itself": stub.SayHelloStreamReply(grace, timeout=5),
        "HelloReply messages": list(stub.SayHelloStreamReply(grace, timeout=5)),
        "greet Ada": ["Hello #1, Ada!", "Hello #2, Ada!", "Hello #3, Ada!"],
        "partly read": ["Hello #2, Grace!", "Hello #3, Grace!"],
        "unary SayHello": ["Hello, Grace!"],
        "read only once": [],
    }
    for explained, answer in cases.items():
        feedback = check("02.stream", answer)
        assert not feedback.solved and explained in feedback.text, (explained, feedback.text)


def test_a_wrong_request_generator_is_explained() -> None:
    def as_list(names):
        return [helloworld_pb2.HelloRequest(name=n) for n in names]

    def strings(names):
        yield from names

    def backwards(names):
        for name in reversed(names):
            yield helloworld_pb2.HelloRequest(name=name)

    assert "next()" in check("02.bidi", as_list).text
    assert "yields str" in check("02.bidi", strings).text
    assert "same order" in check("02.bidi", backwards).text
    assert "no parentheses" in check("02.bidi", backwards(["a"])).text


_RUNTIME = api_pb2.DESCRIPTOR.services_by_name["RuntimeService"]
_STREAMS = [m.name for m in _RUNTIME.methods if m.server_streaming]
_KUBELET_ORDER = ["RunPodSandbox", "ImageStatus", "PullImage", "CreateContainer", "StartContainer"]


def _attempts(containers, name):
    return [c.metadata.attempt for c in containers if c.metadata.name == name]


#: (exercise id, the answers given to check, words the explanation must hold).
WRONG = [
    # 03: the CRI's methods and the handshake
    ("03.count", (41,), "both services"),
    ("03.count", (6,), "ImageService's count"),
    ("03.count", (29,), "let the descriptor count"),
    ("03.count", ("35",), "is text"),
    ("03.count", (35.0,), "the answer is an int"),
    ("03.count", (True,), "is a bool"),
    ("03.count", (list(_RUNTIME.methods),), "len() of it"),
    ("03.count", (_RUNTIME,), "description of the service itself"),
    ("03.server-streams", ("GetContainerEvents",), "one name (a str)"),
    ("03.server-streams", (["GetContainerEvents"],), "one or more are missing"),
    ("03.server-streams", ([*_STREAMS, "StreamImages"],), "belongs to ImageService"),
    ("03.server-streams", ([*_STREAMS, "ListContainers"],), "ListContainers: unary"),
    ("03.server-streams", ([],), "The list is empty"),
    ("03.server-streams", (["StreamEverything"],), "not a method of runtime.v1"),
    ("03.server-streams", ([*_STREAMS, _STREAMS[0]],), "appear twice"),
    ("03.server-streams", ((n for n in _STREAMS),), "wrap it in list()"),
    ("03.server-streams", ([m for m in _RUNTIME.methods if m.server_streaming],), "m.name"),
    ("03.first-call", ("Status",), "Status right after"),
    ("03.first-call", ("RunPodSandbox",), "scheduled to the node"),
    ("03.first-call", ("ListImages",), "checks which API"),
    ("03.first-call", ("Hello",), "not a method of runtime.v1"),
    ("03.first-call", (1,), "a method name, a str"),
    # 04: exit codes, states and the kubelet's order
    ("04.killed-exit-code", (9,), "9 is the signal"),
    ("04.killed-exit-code", (143,), "SIGTERM"),
    ("04.killed-exit-code", (0,), "ended by itself"),
    ("04.killed-exit-code", (-9,), "Python's subprocess"),
    ("04.killed-exit-code", (1,), "chooses when it exits"),
    ("04.killed-exit-code", (200,), "128 + N"),
    ("04.killed-exit-code", ("137",), "is text"),
    ("04.killed-exit-code", (137.0,), "is a float"),
    ("04.stopped-state", ("STOPPED",), "no STOPPED state"),
    ("04.stopped-state", (api_pb2.CONTAINER_CREATED,), "where a container starts"),
    ("04.stopped-state", ("running",), "no longer RUNNING"),
    ("04.stopped-state", (api_pb2.CONTAINER_UNKNOWN,), "lost track"),
    ("04.stopped-state", ("REMOVED",), "Stopping does not remove"),
    ("04.stopped-state", ("SANDBOX_NOTREADY",), "pod sandbox state"),
    ("04.stopped-state", (7,), "not a ContainerState value"),
    ("04.stopped-state", ("asleep",), "not a container state"),
    ("04.stopped-state", (api_pb2.ContainerStatus(state=2),), "its .state field"),
    ("04.start-sequence", ("RunPodSandbox, ImageStatus",), "one str"),
    ("04.start-sequence", ({"RunPodSandbox"},), "a set has no order"),
    ("04.start-sequence", ([],), "The list is empty"),
    ("04.start-sequence", ([n.lower() for n in _KUBELET_ORDER],), "not a CRI method"),
    ("04.start-sequence", ([*_KUBELET_ORDER, "ExecSync"],), "runs a command inside"),
    ("04.start-sequence", (["RunPodSandbox", "PullImage", *_KUBELET_ORDER[3:]],), "Always"),
    ("04.start-sequence", (["RunPodSandbox", "ImageStatus", *_KUBELET_ORDER[3:]],), "pull"),
    ("04.start-sequence", (["CreateContainer", "StartContainer"],), "always created in a pod"),
    ("04.start-sequence", (_KUBELET_ORDER[:3],), "no container exists"),
    ("04.start-sequence", (_KUBELET_ORDER[:4],), "only prepares it"),
    ("04.start-sequence", ([*_KUBELET_ORDER[:3], "StartContainer"],), "CreateContainer made"),
    # the image before the pod: the container runs, but not in the kubelet's order
    ("04.start-sequence", ([*_KUBELET_ORDER[1:3], "RunPodSandbox", *_KUBELET_ORDER[3:]],), "order"),
    (
        "04.start-sequence",
        (["ImageStatus", "RunPodSandbox", *_KUBELET_ORDER[2:]],),
        "before the pod",
    ),
    # 05: percentiles, added latency, deadlines
    ("05.p90", (7.5,), "the maximum"),
    ("05.p90", (1.1,), "the median"),
    ("05.p90", (1.3,), "one place too low"),
    ("05.p90", (1.0,), "unsorted"),
    ("05.p90", (sum(LATENCIES_MS) / len(LATENCIES_MS),), "is the mean"),
    ("05.p90", (0.0024,), "in seconds"),
    ("05.p90", (6.48,), "exclusive"),
    ("05.p90", (4.95,), "of the 11 calls are at or under it"),
    ("05.p90", ("2.4",), "is text"),
    ("05.p90", ([2.4],), "one number"),
    ("05.ratio", (5.0, Measured(0.0005)), "number of milliseconds added"),
    ("05.ratio", (0.5, Measured(0.0005)), "below 1"),
    ("05.ratio", (1.0, Measured(0.005)), "the delay alone"),
    ("05.ratio", (2.0, Measured(0.0005)), "A local call is much shorter"),
    ("05.ratio", (100.0, Measured(0.0005)), "does not multiply"),
    ("05.ratio", ("11", Measured(0.0005)), "is text"),
    ("05.ratio", (11.0, "base"), "the baseline measurement"),
    ("05.deadline-code", (grpc.StatusCode.CANCELLED,), "cancelled"),
    ("05.deadline-code", (grpc.StatusCode.UNAVAILABLE,), "could not be reached"),
    ("05.deadline-code", (grpc.StatusCode.OK,), "finished in time"),
    ("05.deadline-code", (grpc.StatusCode.NOT_FOUND,), "something else than time"),
    ("05.deadline-code", (4,), "is a number"),
    ("05.deadline-code", ("late",), "not a status code"),
    # 06: the restart rule and the next attempt
    ("06.should-restart", (lambda policy, code: code != 0,), "should_restart('Always', 0)"),
    ("06.should-restart", (lambda policy, code: True,), "whatever the policy"),
    ("06.should-restart", (lambda policy, code: False,), "never restarts anything"),
    ("06.should-restart", (lambda policy, code: policy != "Never",), "OnFailure', 0"),
    ("06.should-restart", (lambda policy, code: policy == "Always" or code,), "should return True"),
    ("06.should-restart", (lambda policy: True,), "cannot be called as the loop calls it"),
    ("06.should-restart", (True,), "one bool"),
    ("06.should-restart", ("Always",), "the answer is a function"),
    ("06.next-attempt", (lambda cs, name: len(cs),), "it counts app too"),
    ("06.next-attempt", (lambda cs, name: len(_attempts(cs, name)),), "it counts the containers"),
    ("06.next-attempt", (lambda cs, name: max(_attempts(cs, name), default=0),), "already taken"),
    ("06.next-attempt", (lambda cs, name: str(len(cs)),), "an attempt is an int"),
    ("06.next-attempt", (lambda cs: 0,), "cannot be called as the loop calls it"),
    ("06.next-attempt", (3,), "no parentheses"),
]


@pytest.mark.parametrize(
    ("exercise_id", "answers", "explained"),
    WRONG,
    ids=[f"{exercise_id}-{explained}" for exercise_id, _, explained in WRONG],
)
def test_a_wrong_answer_is_explained(exercise_id: str, answers: tuple, explained: str) -> None:
    feedback = check(exercise_id, *answers)  # never raises
    assert not feedback.solved, feedback
    assert str(feedback).startswith("Not solved yet")
    assert explained in feedback.text, feedback.text
    assert "Hint: " in feedback.text and "Your answer raised" not in feedback.text


def test_every_exercise_of_notebooks_03_to_06_has_wrong_answers_explained() -> None:
    covered = {exercise_id for exercise_id, _, _ in WRONG}
    assert covered == {i for i in exercise_ids() if i[:2] in ("03", "04", "05", "06")}


def test_a_check_given_too_few_or_too_many_answers_says_how_it_reads() -> None:
    few = check("05.ratio", 11.0)  # the base left out
    assert not few.solved and "Your answer raised" not in few.text, few
    assert 'takes 2 answers after the exercise id, check("05.ratio", ratio, base)' in few.text
    assert "gave 1" in few.text and "Hint: " in few.text
    many = check("03.count", 35, 36)
    assert not many.solved and "takes 1 answer after" in many.text and "gave 2" in many.text


def test_the_image_before_the_pod_runs_but_is_not_the_kubelets_order() -> None:
    image_first = ["ImageStatus", "PullImage", "RunPodSandbox", "CreateContainer", "StartContainer"]
    feedback = check("04.start-sequence", image_first)
    assert not feedback.solved
    assert "5. StartContainer: OK" in feedback.text  # it ran: the container runs
    assert "the image comes before the pod" in feedback.text
    assert "RunPodSandbox" in feedback.text and "sandbox_config" in feedback.text


def test_a_registered_exercise_checks_reveals_and_escapes_html(registry) -> None:
    @exercise(
        "99.demo",
        title="Demo <b>",
        hint="think",
        solution="""
            answer = 42
        """,
    )
    def _(answer):
        return right("and one more fact") if answer == 42 else wrong(f"{answer} is <not> it")

    assert check("99.demo", 42).solved
    assert "and one more fact" in check("99.demo", 42).text
    bad = check("99.demo", 1)
    assert "1 is <not> it" in bad.text and "&lt;not&gt;" in bad._repr_html_()
    assert "Demo &lt;b&gt;" in bad._repr_html_()
    assert solution_source("99.demo") == "answer = 42\n"
    solution = reveal("99.demo")
    assert "answer = 42" in str(solution) and "<pre" in solution._repr_html_()
    assert exercise_ids("99") == ["99.demo"]


def test_reveal_and_solution_source_refuse_an_unknown_exercise() -> None:
    with pytest.raises(LookupError, match=r"01\.varint"):
        reveal("99.nothing")
    with pytest.raises(LookupError):
        solution_source("nonsense")


def test_an_exercise_id_must_name_its_notebook() -> None:
    with pytest.raises(ValueError, match=r"NN\.short-name"):
        exercise("varint", title="t", hint="h", solution="")
