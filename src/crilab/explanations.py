"""``explain(error)``: what a failed CRI call means, for a learner.

A ``grpc.RpcError`` carries a status code and the server's message. The code
says what *kind* of failure it was in gRPC terms; in CRI terms each code
points at a typical mistake (a wrong ID, a container in the wrong state...).
``explain`` puts both next to the server's own words, with what to try::

    try:
        client.start_container(cid)
    except grpc.RpcError as err:
        crilab.explain(err)      # a styled box in Jupyter, plain text in print()
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import grpc

__all__ = ["CODES", "Explanation", "explain"]


@dataclass(frozen=True)
class _Entry:
    meaning: str
    likely: str
    hint: str


#: Every gRPC status code: its meaning in gRPC, the likely CRI mistake, what to try.
CODES: dict[str, _Entry] = {
    "OK": _Entry(
        "The call succeeded; there is no error.",
        "Nothing went wrong.",
        "Nothing to do.",
    ),
    "CANCELLED": _Entry(
        "The call was cancelled, usually by the client, before it finished.",
        "You (or your code) cancelled the call: e.g. closed a GetContainerEvents stream, "
        "interrupted the kernel, or closed the channel while a call was running.",
        "If you did not mean to cancel, keep the channel open until the call returns.",
    ),
    "UNKNOWN": _Entry(
        "The server failed with an error that has no better status code.",
        "containerd answers UNKNOWN for many ordinary mistakes (a bad config field, an image "
        "that cannot be unpacked, a failed mount); read the details, they carry the real cause.",
        "Read the details message; check the config you sent and the runtime's own log.",
    ),
    "INVALID_ARGUMENT": _Entry(
        "The request itself is wrong, whatever the server's state.",
        "A required field is missing or malformed: an empty ID, no metadata.name, no "
        "image.image, a relative log_directory, or a badly formed image reference.",
        "Fill in the field the details name; crilab.builders.pod_config / container_config "
        "set the usual ones.",
    ),
    "DEADLINE_EXCEEDED": _Entry(
        "The call did not finish before its deadline.",
        "The call took longer than its timeout (a slow runtime, a big pull, an injected "
        "delay), or an ExecSync command ran past its timeout_seconds.",
        "Pass a larger timeout=..., or give ExecSync a longer timeout_seconds; a real kubelet "
        "uses 2 minutes for most calls.",
    ),
    "NOT_FOUND": _Entry(
        "Something the request names does not exist on the server.",
        "A wrong, mistyped or already removed pod/container ID, or an image that was never "
        "pulled (CreateContainer needs the image present first).",
        "List what exists (list_pod_sandbox(), list_containers(), list_images()) and use "
        "those IDs; pull the image first (client.ensure_image(ref)).",
    ),
    "ALREADY_EXISTS": _Entry(
        "What the request would create already exists.",
        "A pod or container with the same metadata (name, namespace, uid, attempt) already "
        "exists: the runtime reserves names, as the kubelet relies on.",
        "Remove the old one first, or increase metadata.attempt as the kubelet does on restart.",
    ),
    "PERMISSION_DENIED": _Entry(
        "The caller is not allowed to do this.",
        "The runtime refused the operation for this caller: a privileged setting it does not "
        "allow, or a registry that denied the image pull.",
        "Check the security settings you asked for, and the registry credentials.",
    ),
    "RESOURCE_EXHAUSTED": _Entry(
        "A resource ran out: a quota, memory, or the maximum message size.",
        "A message over the 16 MiB limit (e.g. ListContainers on a node with very many "
        "containers), or the runtime is out of space.",
        "Use filters (pod_id=, state=, labels=) or the Stream* RPCs, which send the list in "
        "chunks; free space if the details say so.",
    ),
    "FAILED_PRECONDITION": _Entry(
        "The request is valid but the server is not in a state to perform it.",
        "The container or pod is in the wrong state: starting a container twice, exec in a "
        "container that is only CREATED or already EXITED, or removing a running one.",
        "Check the state first (container_status(id).state) and follow the lifecycle: "
        "create -> start -> stop -> remove.",
    ),
    "ABORTED": _Entry(
        "The operation was aborted, typically by a conflict with a concurrent operation.",
        "Two calls raced on the same pod or container (e.g. stop and remove at once).",
        "Retry the call once the other operation has finished.",
    ),
    "OUT_OF_RANGE": _Entry(
        "A value was past the valid range (e.g. reading past the end).",
        "A number in the request is outside what the runtime accepts.",
        "Check numeric fields such as offsets, sizes and timeouts.",
    ),
    "UNIMPLEMENTED": _Entry(
        "The server does not offer this method (or this service).",
        "The runtime does not implement that RPC: an older runtime, an optional feature "
        "(CheckpointContainer, streaming Exec in the fake), or a server that is not a "
        "runtime.v1 CRI runtime at all.",
        "Use a call the runtime supports (e.g. ExecSync instead of Exec), or a newer runtime.",
    ),
    "INTERNAL": _Entry(
        "The server broke an invariant of its own: a bug, not your request.",
        "A bug in the runtime (or a corrupted message); the request was probably fine.",
        "Read the details; report it to the runtime's developers if it repeats.",
    ),
    "UNAVAILABLE": _Entry(
        "The server could not be reached or is shutting down; the call may be retried.",
        "Nothing is listening at the endpoint, the runtime stopped or restarted, or the "
        "socket path is wrong.",
        "Start a runtime (rt = crilab.FakeRuntime(); crilab.connect(rt.endpoint), or "
        "`crilab serve`) and check the endpoint; then retry.",
    ),
    "DATA_LOSS": _Entry(
        "Unrecoverable data loss or corruption.",
        "The runtime lost or corrupted stored data (e.g. a damaged image or log file).",
        "Remove and recreate the affected image, container or pod.",
    ),
    "UNAUTHENTICATED": _Entry(
        "The request has no valid credentials.",
        "A registry needs credentials for this image pull (CRI runtimes themselves do not "
        "authenticate local callers).",
        "Pass registry auth with the pull, or use a public image.",
    ),
}

_RUNTIME_UNAVAILABLE = _Entry(
    "crilab could not find a usable CRI runtime before making any call.",
    "No endpoint was given, nothing listens at the one given, or the server there does not "
    "speak runtime.v1.",
    "rt = crilab.FakeRuntime(); client = crilab.connect(rt.endpoint) - or run `crilab serve`, "
    "or set CONTAINER_RUNTIME_ENDPOINT.",
)

_NOT_GRPC = _Entry(
    "A Python exception, not a gRPC status: the call never reached the server or its answer "
    "was used wrongly.",
    "A mistake on the client side (a wrong argument type, a typo in a name, a missing file).",
    "Read the exception's message (the details above): it names what is wrong and, for "
    "crilab's own checks, what to do instead.",
)


@dataclass(frozen=True)
class Explanation:
    """A failed call, explained: code, the server's details, and what they mean."""

    code: str
    details: str
    meaning: str
    likely: str
    hint: str

    def __str__(self) -> str:
        return "\n".join(
            [
                f"{self.code}: {self.details or '(no details)'}",
                f"  meaning: {self.meaning}",
                f"  likely:  {self.likely}",
                f"  try:     {self.hint}",
            ]
        )

    def _repr_html_(self) -> str:
        e = html.escape
        rows = "".join(
            f"<tr><th style='text-align:left;padding-right:1em;vertical-align:top'>{e(k)}</th>"
            f"<td style='text-align:left'>{e(v)}</td></tr>"
            for k, v in (("meaning", self.meaning), ("likely", self.likely), ("try", self.hint))
        )
        return (
            "<div style='border-left:4px solid #c0392b;background:#fdf2f2;padding:.5em 1em;"
            "margin:.3em 0;font-family:sans-serif'>"
            f"<div><b style='color:#c0392b'>{e(self.code)}</b> "
            f"<code>{e(self.details or '(no details)')}</code></div>"
            f"<table style='margin-top:.4em'>{rows}</table></div>"
        )


def explain(error: BaseException | grpc.StatusCode | str) -> Explanation:
    """Explain a ``grpc.RpcError``, a ``RuntimeUnavailable``, any exception, or a code."""
    if isinstance(error, grpc.StatusCode | str):
        name = error.name if isinstance(error, grpc.StatusCode) else str(error).upper()
        return _from_code(name, "")
    code = _code_of(error)
    if code is not None:
        details = error.details() if callable(getattr(error, "details", None)) else ""
        return _from_code(code.name, details or "")
    return _from_exception(error)


def _code_of(error: BaseException) -> grpc.StatusCode | None:
    """The status code of an RpcError (sync or asyncio), if it carries one."""
    code = getattr(error, "code", None)
    if not callable(code):
        return None
    try:
        value = code()
    except Exception:  # an exception with an unrelated code() method
        return None
    return value if isinstance(value, grpc.StatusCode) else None


def _from_code(name: str, details: str) -> Explanation:
    entry = CODES.get(name)
    if entry is None:
        known = ", ".join(CODES)
        raise ValueError(f"{name!r} is not a gRPC status code; use one of {known}")
    likely = _refine(name, details) or entry.likely
    return Explanation(name, details, entry.meaning, likely, entry.hint)


def _refine(name: str, details: str) -> str:
    """A sharper guess when the server's message says which case it is."""
    text = details.lower()
    if name == "NOT_FOUND" and "image" in text:
        return "The image is not on the runtime: it was never pulled (or was removed)."
    if name == "DEADLINE_EXCEEDED" and "exec" in text:
        return "The ExecSync command ran longer than its timeout_seconds."
    return ""


def _from_exception(error: BaseException) -> Explanation:
    from .client import IncompatibleRuntime, RuntimeUnavailable

    if isinstance(error, IncompatibleRuntime):
        entry = CODES["UNIMPLEMENTED"]
        return Explanation(
            "UNIMPLEMENTED",
            str(error),
            entry.meaning,
            "The server answers, but not with the runtime.v1 CRI API crilab speaks.",
            "Use a runtime that speaks runtime.v1 (containerd 1.6 or newer, a current CRI-O, "
            "or crilab.FakeRuntime()).",
        )
    if isinstance(error, RuntimeUnavailable):
        entry = _RUNTIME_UNAVAILABLE
        return Explanation("UNAVAILABLE", str(error), entry.meaning, entry.likely, entry.hint)
    entry = _NOT_GRPC
    return Explanation(type(error).__name__, str(error), entry.meaning, entry.likely, entry.hint)
