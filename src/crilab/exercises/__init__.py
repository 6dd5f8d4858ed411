"""Exercises for the crilab notebooks: check an answer, explain it, reveal a solution.

What a learner types in a notebook::

    from crilab.exercises import check, reveal

    answer = ...                  # the exercise cell: replace the ... with an answer
    check("01.varint", answer)    # the check cell: a coloured box, never an exception
    reveal("01.varint")           # the reference solution, only when asked for

``check`` never raises. A placeholder (``...`` or ``None``) gives "Not solved
yet" with the exercise's hint; a wrong answer is explained (what it means and
why it is not the answer); an answer that raises is reported as such; a check
call with too few or too many answers says how the call reads; a right answer
is congratulated with one more fact.

Adding the exercises of notebook NN (the convention)
----------------------------------------------------
1. Write ``crilab/exercises/nbNN.py``; each exercise is one checker function
   registered under the id ``"NN.short-name"``::

       from . import exercise, right, wrong

       @exercise(
           "NN.answer",
           title="The answer",
           hint="Where to look to find it.",
           solution='''
               answer = 42
           ''',
       )
       def _(answer):
           if answer == 42:
               return right("Yes. One more fact the learner did not ask for.")
           return wrong(f"{answer!r} means ...; it is not the answer because ...")

   The checker gets the answers passed to ``check`` after the id and returns
   ``right(text)``, ``wrong(text)`` or ``unanswered()`` (for a placeholder it
   finds deeper down, e.g. a learner's function that still returns ``None``).
   Placeholders passed to ``check`` directly never reach it, and anything it
   raises becomes "Not solved yet". ``solution`` is the code that, put in the
   exercise cell instead of the learner's, solves the exercise; it lives here,
   never in the notebook. ``check("NN.x")`` imports ``crilab.exercises.nbNN``
   on first use, so there is nothing else to register.
2. In the notebook ``notebooks/NN-title.ipynb``, tag the exercise cell with the cell metadata
   ``{"crilab": {"exercise": "NN.answer"}}`` and the cell that calls
   ``check("NN.answer", answer)`` with ``{"crilab": {"check": "NN.answer"}}``.
   ``tests/test_notebooks.py`` runs the notebook as shipped (every check says
   "Not solved yet") and with ``solution_source(id)`` in each exercise cell
   (every check says "Solved").
"""

from __future__ import annotations

import html
import importlib
import inspect
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Feedback",
    "Solution",
    "check",
    "exercise",
    "exercise_ids",
    "reveal",
    "right",
    "solution_source",
    "unanswered",
    "wrong",
]

SOLVED = "Solved"
NOT_SOLVED = "Not solved yet"


@dataclass(frozen=True)
class Verdict:
    """What a checker decided; ``check`` turns it into :class:`Feedback`."""

    solved: bool
    text: str
    placeholder: bool = False


def right(fact: str) -> Verdict:
    """The answer is right; ``fact`` is one more thing worth knowing."""
    return Verdict(True, fact)


def wrong(explanation: str) -> Verdict:
    """The answer is wrong; ``explanation`` says what it means and why it is not it."""
    return Verdict(False, explanation)


def unanswered(note: str = "") -> Verdict:
    """The answer is still a placeholder (``note`` may say which part)."""
    return Verdict(False, note, placeholder=True)


@dataclass(frozen=True)
class Exercise:
    exercise_id: str
    title: str
    hint: str
    solution: str
    checker: Callable[..., Verdict]


_REGISTRY: dict[str, Exercise] = {}
_ID = re.compile(r"^(\d\d)\.[a-z0-9_-]+$")


def exercise(
    exercise_id: str, *, title: str, hint: str, solution: str
) -> Callable[[Callable[..., Verdict]], Callable[..., Verdict]]:
    """Register the decorated function as the checker of ``exercise_id`` ("NN.name")."""
    if not _ID.match(exercise_id):
        raise ValueError(f"exercise id {exercise_id!r} is not 'NN.short-name' (e.g. '01.varint')")

    def register(checker: Callable[..., Verdict]) -> Callable[..., Verdict]:
        source = textwrap.dedent(solution).strip("\n") + "\n"
        _REGISTRY[exercise_id] = Exercise(exercise_id, title, hint, source, checker)
        return checker

    return register


def _load(notebook: str) -> None:
    """Import ``nbNN``, the module holding notebook NN's exercises, if there is one."""
    module = f"{__name__}.nb{notebook}"
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:  # the module exists but one of its imports does not
            raise


def _find(exercise_id: str) -> Exercise | None:
    if exercise_id not in _REGISTRY:
        match = _ID.match(exercise_id) if isinstance(exercise_id, str) else None
        if match:
            _load(match.group(1))
    return _REGISTRY.get(exercise_id)


def _lookup(exercise_id: str) -> Exercise:
    found = _find(exercise_id)
    if found is None:
        known = ", ".join(exercise_ids()) or "none"
        raise LookupError(f"no exercise named {exercise_id!r} (known: {known})")
    return found


def exercise_ids(notebook: str | None = None) -> list[str]:
    """Registered exercise ids; ``notebook="01"`` loads and lists that notebook's only."""
    if notebook is not None:
        _load(notebook)
        return sorted(i for i in _REGISTRY if i.startswith(f"{notebook}."))
    return sorted(_REGISTRY)


@dataclass(frozen=True)
class Feedback:
    """The result of :func:`check`: a coloured box in Jupyter, plain text in ``print``."""

    exercise_id: str
    solved: bool
    title: str
    text: str

    @property
    def status(self) -> str:
        return SOLVED if self.solved else NOT_SOLVED

    def __str__(self) -> str:
        return f"{self.status} ({self.exercise_id}: {self.title})\n{self.text}"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        colour, background, mark = (
            ("#1e8449", "#eafaf1", "&#10004;") if self.solved else ("#9a6700", "#fff8e1", "&#9675;")
        )
        return (
            f"<div class='crilab-feedback' data-solved='{str(self.solved).lower()}' "
            f"style='border-left:4px solid {colour};background:{background};"
            "padding:.5em 1em;margin:.3em 0;font-family:sans-serif'>"
            f"<b style='color:{colour}'>{mark} {self.status}</b> "
            f"<span style='color:#555'>{html.escape(self.exercise_id)} · "
            f"{html.escape(self.title)}</span>"
            f"<div style='margin-top:.3em;white-space:pre-wrap'>{html.escape(self.text)}</div>"
            "</div>"
        )


@dataclass(frozen=True)
class Solution:
    """A reference solution, shown on purpose with :func:`reveal`."""

    exercise_id: str
    title: str
    source: str

    def __str__(self) -> str:
        return f"# Reference solution of {self.exercise_id}: {self.title}\n{self.source}"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        return (
            "<div class='crilab-solution' style='border-left:4px solid #2e86c1;"
            "background:#eef6fc;padding:.5em 1em;margin:.3em 0;font-family:sans-serif'>"
            f"<b>Reference solution</b> <span style='color:#555'>"
            f"{html.escape(self.exercise_id)} · {html.escape(self.title)}</span>"
            f"<pre style='margin:.4em 0 0'><code>{html.escape(self.source)}</code></pre></div>"
        )


def _is_placeholder(answer: object) -> bool:
    return answer is ... or answer is None


def _describe(exc: BaseException) -> str:
    """``Type: message``; for a gRPC error its status code and details."""
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):
        try:
            return f"{type(exc).__name__}: {code().name}: {details()}"
        except Exception:
            pass
    return f"{type(exc).__name__}: {exc}"


def _miscount(ex: Exercise, answers: tuple[object, ...]) -> str | None:
    """What is wrong with the check call itself when it passes too few or too many answers.

    A missing argument is the check cell's doing, not the learner's answer: say how the
    call should read instead of reporting the checker's TypeError as the answer's.
    """
    try:
        signature = inspect.signature(ex.checker)
    except (TypeError, ValueError):
        return None  # no signature to read: let the checker decide
    try:
        signature.bind(*answers)
    except TypeError:
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        names = [p.name for p in signature.parameters.values() if p.kind in positional]
        call = ", ".join([f'"{ex.exercise_id}"', *names])
        wanted = f"{len(names)} answer{'s' if len(names) != 1 else ''}"
        return (
            f"This check takes {wanted} after the exercise id, check({call}), and this call "
            f"gave {len(answers)}. The check cell as shipped passes them all: run it as it is, "
            "after the exercise cell (and the cells before it, which define what it passes)."
        )
    return None


def check(exercise_id: str, *answers: object) -> Feedback:
    """Check the answer(s) to ``exercise_id``. Never raises."""
    try:
        ex = _find(exercise_id)
    except Exception as exc:  # a broken exercise module must not break the notebook
        return Feedback(str(exercise_id), False, "exercise", f"Cannot load it: {_describe(exc)}")
    if ex is None:
        known = ", ".join(exercise_ids()) or "none"
        text = f"There is no exercise named {exercise_id!r}. Known exercises: {known}."
        return Feedback(str(exercise_id), False, "unknown exercise", text)

    hint = f"Hint: {ex.hint}"
    if not answers or any(_is_placeholder(a) for a in answers):
        verdict = unanswered()
    elif (miscount := _miscount(ex, answers)) is not None:
        return Feedback(exercise_id, False, ex.title, f"{miscount}\n{hint}")
    else:
        try:
            verdict = ex.checker(*answers)
            if not isinstance(verdict, Verdict):
                raise TypeError(f"the checker returned {verdict!r}, not right()/wrong()")
        except Exception as exc:
            text = f"Your answer raised {_describe(exc)}\n{hint}"
            return Feedback(exercise_id, False, ex.title, text)

    if verdict.solved:
        return Feedback(exercise_id, True, ex.title, verdict.text)
    if verdict.placeholder:
        lead = verdict.text or (
            "There is no answer yet: replace the ... in the exercise cell, run that cell, "
            "then run this one again."
        )
        return Feedback(exercise_id, False, ex.title, f"{lead}\n{hint}")
    return Feedback(exercise_id, False, ex.title, f"{verdict.text}\n{hint}")


def reveal(exercise_id: str) -> Solution:
    """Show the reference solution of ``exercise_id`` (look on purpose, after trying)."""
    ex = _lookup(exercise_id)
    return Solution(ex.exercise_id, ex.title, ex.solution)


def solution_source(exercise_id: str) -> str:
    """The code that, placed in the exercise cell, solves ``exercise_id``."""
    return _lookup(exercise_id).solution
