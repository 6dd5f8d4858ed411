"""explain(): every status code, real errors from the fake runtime, safe HTML."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

import crilab
from crilab import FakeRuntime
from crilab.client import Client, RuntimeUnavailable, connect
from crilab.explanations import CODES, Explanation, explain


@pytest.fixture
def client() -> Iterator[Client]:
    with FakeRuntime() as rt, connect(rt.endpoint) as c:
        yield c


def test_every_status_code_is_covered() -> None:
    assert set(CODES) == {code.name for code in grpc.StatusCode}
    assert len(CODES) == 17  # OK and the 16 error codes


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda c: c.name)
def test_each_code_has_meaning_likely_hint(code: grpc.StatusCode) -> None:
    for given in (code, code.name, code.name.lower()):
        e = explain(given)
        assert e.code == code.name
        assert e.meaning.endswith(".") and e.likely and e.hint
        assert len({e.meaning, e.likely, e.hint}) == 3  # three different things to say


@pytest.mark.parametrize(
    ("code", "word"),
    [
        ("NOT_FOUND", "ID"),
        ("FAILED_PRECONDITION", "state"),
        ("ALREADY_EXISTS", "attempt"),
        ("INVALID_ARGUMENT", "field"),
        ("DEADLINE_EXCEEDED", "ExecSync"),
        ("UNAVAILABLE", "listening"),
        ("UNIMPLEMENTED", "RPC"),
        ("RESOURCE_EXHAUSTED", "16 MiB"),
        ("UNKNOWN", "containerd"),
    ],
)
def test_likely_mistakes_in_cri_terms(code: str, word: str) -> None:
    assert word in explain(code).likely


def test_real_not_found_from_the_fake(client: Client) -> None:
    with pytest.raises(grpc.RpcError) as info:
        client.container_status("0123456789ab")
    e = explain(info.value)
    assert e.code == "NOT_FOUND"
    assert e.details == info.value.details() and e.details
    assert "ID" in e.likely
    text = str(e)
    assert text.splitlines()[0] == f"NOT_FOUND: {e.details}"
    assert "meaning:" in text and "try:" in text


def test_real_missing_image(client: Client) -> None:
    from crilab.builders import container_config, pod_config

    pod_id = client.run_pod_sandbox(pod_config("web"))
    with pytest.raises(grpc.RpcError) as info:
        client.create_container(pod_id, container_config("app", "never-pulled:1"))
    e = explain(info.value)
    assert e.code == "NOT_FOUND" and "pulled" in e.likely


def test_runtime_unavailable_and_plain_exceptions() -> None:
    e = explain(RuntimeUnavailable("nothing at unix:///x.sock"))
    assert e.code == "UNAVAILABLE" and "FakeRuntime" in e.hint
    e = explain(KeyError("name"))
    assert e.code == "KeyError" and e.details == "'name'"
    assert "message" in e.hint and "traceback" not in e.hint.lower()  # no traceback is shown
    with pytest.raises(ValueError, match="not a gRPC status code"):
        explain("NOPE")


def test_html_is_escaped() -> None:
    e = Explanation("NOT_FOUND", "<script>alert('x')</script> & more", "m<", "l>", "h&")
    page = e._repr_html_()
    assert "<script>" not in page
    assert "&lt;script&gt;" in page and "&amp; more" in page
    assert "m&lt;" in page and "l&gt;" in page and "h&amp;" in page
    assert page.startswith("<div") and "NOT_FOUND" in page


def test_crilab_explain_is_the_function() -> None:
    assert isinstance(crilab.explain(grpc.StatusCode.CANCELLED), Explanation)
    assert crilab.explain is explain
