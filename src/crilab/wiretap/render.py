"""What a tap saw, as JSON (for tools) and as an HTML transcript (for a notebook).

Every string that came off the wire is escaped before it reaches HTML: header
values and message fields are the *peer's* data, and a notebook renders HTML.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .decode import CLIENT_TO_SERVER, CallRecord, FrameRecord

if TYPE_CHECKING:
    from .proxy import Tap

__all__ = ["to_json", "transcript_html"]

_STYLE = """
<style>
.crilab-wiretap table { border-collapse: collapse; font-size: 12px; margin: 4px 0 10px; }
.crilab-wiretap th, .crilab-wiretap td { border-bottom: 1px solid #ddd; padding: 2px 6px;
  text-align: left; vertical-align: top; }
.crilab-wiretap pre { margin: 2px 0; white-space: pre-wrap; max-width: 70em; }
.crilab-wiretap .c2s { color: #1f4e99; }
.crilab-wiretap .s2c { color: #1c6b2a; }
.crilab-wiretap .bad { color: #b00020; font-weight: bold; }
.crilab-wiretap .pseudo { font-weight: bold; }
.crilab-wiretap .muted { color: #777; }
</style>
"""


def to_json(tap: Tap, indent: int | None = None) -> str:
    """``{"endpoint", "upstream", "dropped", "frames": [...], "calls": [...]}`` as JSON text.

    ``dropped`` counts frames pushed out of the capture, ``summarised`` messages whose
    decoded fields were dropped for its byte budget (they keep a ``summary``)."""
    frames = tap.frames
    calls = tap.calls
    document = {
        "endpoint": tap.endpoint,
        "upstream": tap.upstream.uri,
        "capacity": tap.capacity,
        "dropped": tap.capture.dropped,
        "summarised": tap.capture.summarised,
        "frames": [f.as_dict() for f in frames],
        "calls": [c.as_dict() for c in calls],
    }
    return json.dumps(document, indent=indent, ensure_ascii=False, default=str)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _clip(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return _e(text)
    more = len(text) - max_chars
    return _e(text[:max_chars]) + f'<span class="muted">… {more} more characters</span>'


def _headers(headers: Sequence[Sequence[str]]) -> str:
    rows = []
    for name, value in headers:
        cls = ' class="pseudo"' if name.startswith(":") or name.startswith("grpc-") else ""
        rows.append(f"<span{cls}>{_e(name)}</span>: {_e(value)}")
    return "<br>".join(rows)


def _message(message: dict[str, Any], max_chars: int) -> str:
    head = (
        f"gRPC message: compressed={int(bool(message.get('compressed')))} "
        f"length={message.get('length')} (prefix {message.get('prefix', '')})"
    )
    if message.get("message_type"):
        head += f" → {message['message_type']}"
    parts = [_e(head)]
    if message.get("error"):
        parts.append(f'<span class="bad">{_e(message["error"])}</span>')
    if message.get("note"):
        parts.append(f'<span class="muted">{_e(message["note"])}</span>')
    if message.get("fields") is not None:
        text = json.dumps(message["fields"], indent=1, ensure_ascii=False)
        parts.append(f"<pre>{_clip(text, max_chars)}</pre>")
    elif message.get("summary") is not None:
        text = json.dumps(message["summary"], indent=1, ensure_ascii=False)
        parts.append(f'<span class="muted">summary:</span><pre>{_clip(text, max_chars)}</pre>')
    elif message.get("raw"):
        parts.append(f"<pre>{_e(message['raw'])}</pre>")
    return "<br>".join(parts)


def _detail(frame: FrameRecord, max_chars: int) -> str:
    d = frame.detail
    parts: list[str] = []
    if d.get("error"):
        parts.append(f'<span class="bad">{_e(d["error"])}</span>')
    if frame.type == "PREFACE":
        parts.append(f"<code>{_e(repr(d.get('preface', '')))}</code> (the client's first bytes)")
    elif frame.type == "SETTINGS":
        if d.get("ack"):
            parts.append("ACK: the peer's settings are in force")
        settings = d.get("settings") or {}
        if settings:
            parts.append("<br>".join(f"{_e(k)} = {_e(v)}" for k, v in settings.items()))
        elif not d.get("ack"):
            parts.append('<span class="muted">(no settings: all defaults)</span>')
    elif frame.type in ("HEADERS", "CONTINUATION", "PUSH_PROMISE"):
        if d.get("kind"):
            parts.append(f"<b>{_e(d['kind'])}</b>")
        if d.get("awaiting"):
            parts.append(
                f"{_e(d.get('fragment_bytes'))} bytes of a header block; the rest follows in "
                "CONTINUATION"
            )
        if d.get("headers") is not None:
            parts.append(_headers(d["headers"]))
    elif frame.type == "DATA":
        for message in d.get("messages") or []:
            parts.append(_message(message, max_chars))
        waiting = d.get("incomplete_message")
        if waiting:
            total = waiting.get("length")
            of = f" of {total + 5}" if total is not None else ""
            parts.append(
                _e(f"part of a gRPC message: {waiting['have']}{of} bytes so far, more DATA follows")
            )
        if d.get("note"):
            parts.append(f'<span class="muted">{_e(d["note"])}</span>')
    elif frame.type == "PING":
        parts.append(_e(f"{'ACK of ' if d.get('ack') else ''}opaque {d.get('opaque_data', '')}"))
    elif frame.type == "WINDOW_UPDATE":
        parts.append(_e(f"+{d.get('increment')} bytes of flow-control window"))
    elif frame.type == "RST_STREAM":
        parts.append(f'<span class="bad">{_e(d.get("error"))}</span>: the stream is abandoned')
    elif frame.type == "GOAWAY":
        parts.append(
            _e(
                f"{d.get('error')}: no new streams after {d.get('last_stream_id')}"
                + (f" ({d['debug_data']})" if d.get("debug_data") else "")
            )
        )
    else:
        rest = {k: v for k, v in d.items() if k != "error"}
        if rest:
            parts.append(f"<pre>{_clip(json.dumps(rest, ensure_ascii=False), max_chars)}</pre>")
    if d.get("end_stream"):
        parts.append('<span class="muted">END_STREAM: this side is done with the stream</span>')
    return "<br>".join(p for p in parts if p)


def _count(kept: int, dropped: int) -> str:
    if not dropped:
        return str(kept)
    return f'{kept} <span class="muted">(+{dropped} older, not kept)</span>'


def _calls_table(calls: Sequence[CallRecord]) -> str:
    rows = []
    for c in calls:
        duration = "in flight" if c.duration is None else f"{c.duration * 1000:.2f} ms"
        code = c.code or "…"
        cls = "" if c.ok or not c.code else ' class="bad"'
        message = f" ({_e(c.message)})" if c.message else ""
        note = f'<br><span class="muted">{_e(c.note)}</span>' if c.note else ""
        rows.append(
            f"<tr><td>{c.connection}</td><td>{c.stream}</td><td>{_e(c.path)}</td>"
            f"<td>{_count(len(c.request_messages), c.requests_dropped)}</td>"
            f"<td>{_count(len(c.response_messages), c.responses_dropped)}</td>"
            f"<td{cls}>{_e(code)}{message}{note}</td><td>{_e(duration)}</td></tr>"
        )
    return (
        "<table><thead><tr><th>conn</th><th>stream</th><th>:path</th><th>requests</th>"
        "<th>responses</th><th>grpc-status</th><th>duration</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def transcript_html(tap: Tap, limit: int = 300, max_chars: int = 4000) -> str:
    """The calls, then the last ``limit`` frames, one table row each."""
    frames = tap.frames
    calls = tap.calls
    shown = frames[-limit:] if limit else frames
    t0 = frames[0].time if frames else 0.0
    head = (
        f"<p><b>wiretap</b> {_e(tap.endpoint)} → {_e(tap.upstream.uri)}: "
        f"{len(frames)} frames, {len(calls)} calls"
    )
    if tap.capture.dropped:
        head += f" ({tap.capture.dropped} older frames dropped; capacity {tap.capacity})"
    if tap.capture.summarised:
        head += (
            f"; {tap.capture.summarised} older messages summarised (their decoded fields "
            "dropped to keep the capture small)"
        )
    if len(shown) < len(frames):
        head += f"; showing the last {len(shown)} frames"
    head += "</p>"
    if not frames:
        return (
            f'<div class="crilab-wiretap">{_STYLE}{head}<p class="muted">Nothing captured yet: '
            f"point a client at {_e(tap.endpoint)}.</p></div>"
        )
    rows = []
    for f in shown:
        arrow, cls = ("→", "c2s") if f.direction == CLIENT_TO_SERVER else ("←", "s2c")
        if f.direction not in ("client→server", "server→client"):
            arrow, cls = "·", "muted"
        rows.append(
            f'<tr class="{cls}"><td>{(f.time - t0) * 1000:.3f}</td><td>{f.connection}</td>'
            f"<td>{arrow} {_e(f.direction)}</td><td>{f.stream}</td><td><b>{_e(f.type)}</b></td>"
            f"<td>{_e(' '.join(f.flags))}</td><td>{f.length}</td>"
            f"<td>{_detail(f, max_chars)}</td></tr>"
        )
    frames_table = (
        "<table><thead><tr><th>ms</th><th>conn</th><th>direction</th><th>stream</th>"
        "<th>type</th><th>flags</th><th>length</th><th>what it carries</th></tr></thead>"
        "<tbody>" + "".join(rows) + "</tbody></table>"
    )
    calls_part = _calls_table(calls) if calls else ""
    return f'<div class="crilab-wiretap">{_STYLE}{head}{calls_part}{frames_table}</div>'
