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
from crilab.stubs import helloworld_pb2, helloworld_pb2_grpc


@pytest.fixture
def registry(monkeypatch) -> None:
    """A private copy of the registry, so test exercises do not leak into others."""
    monkeypatch.setattr(exercises, "_REGISTRY", dict(exercises._REGISTRY))


@pytest.fixture(scope="module")
def notebook() -> Iterator[dict[str, object]]:
    """The names the exercise cells of notebooks 01 and 02 can use, with a live Greeter."""
    with helloworld.serve() as server, helloworld.channel(server.endpoint.uri) as channel:
        yield {
            "grpc": grpc,
            "helloworld_pb2": helloworld_pb2,
            "helloworld_pb2_grpc": helloworld_pb2_grpc,
            "stub": helloworld_pb2_grpc.GreeterStub(channel),
        }


ANSWER = {"01.varint": "answer", "01.unavailable": "code", "02.stream": "replies"}
ANSWER["02.bidi"] = "hello_requests"
ANSWER["02.data-frame"] = "data_length"


def test_the_notebooks_exercises_are_registered() -> None:
    assert exercise_ids("01") == ["01.unavailable", "01.varint"]
    assert exercise_ids("02") == ["02.bidi", "02.data-frame", "02.stream"]
    assert set(ANSWER) <= set(exercise_ids())


@pytest.mark.parametrize("exercise_id", sorted(ANSWER))
def test_the_reference_solution_solves_it(exercise_id: str, notebook) -> None:
    scope = dict(notebook)
    exec(solution_source(exercise_id), scope)
    feedback = check(exercise_id, scope[ANSWER[exercise_id]])
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
