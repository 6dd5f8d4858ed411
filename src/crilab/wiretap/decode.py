"""Bytes → records: HTTP/2 frames, HPACK headers, gRPC messages, protobuf fields.

Everything here works on a *copy* of the bytes the proxy forwards, on its own
thread, so nothing it does (or fails to do) can delay or break a call. The
parsing is done by well-kept libraries, never by hand:

* ``hyperframe`` cuts the byte stream into HTTP/2 frames (9-byte header, body);
* ``hpack`` decodes header blocks, one decoder per direction per connection,
  since HPACK's dynamic table is shared state between one encoder and one decoder;
* ``google.protobuf`` parses each gRPC message with the type the method's
  descriptor names (``input_type`` client→server, ``output_type`` server→client).

Only gRPC's own 5-byte message prefix (1 byte "compressed" flag, 4 bytes
big-endian length) is read here: it is the one layer no library covers.

What is kept stays bounded however much passes: ``capacity`` frames and calls,
at most ``MESSAGES_PER_CALL`` messages per call and direction (a long stream
keeps its newest), at most ``capacity`` messages in all, decoded fields within
``KEEP_DECODED_BYTES`` (older messages keep a summary of their top-level
fields), and a message over ``DECODE_MESSAGE_BYTES`` is summarised, never
turned into a dict (1,000 containers would be 2 MiB of dicts).
"""

from __future__ import annotations

import collections
import functools
import threading
import urllib.parse
import zlib
from dataclasses import dataclass, field
from typing import Any

import grpc
import hpack
from google.protobuf import descriptor_pool, json_format, message_factory
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    ExtensionFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

__all__ = [
    "CLIENT_TO_SERVER",
    "PREFACE",
    "SERVER_TO_CLIENT",
    "CallRecord",
    "Capture",
    "FrameRecord",
    "message_classes",
]

CLIENT_TO_SERVER = "client→server"
SERVER_TO_CLIENT = "server→client"

#: What every HTTP/2 client sends first (RFC 9113 §3.4), before any frame.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_FRAME_HEADER = 9

#: Frame type names as RFC 9113 §6 (and RFC 7838 for ALTSVC) spell them.
FRAME_TYPES = {
    0x0: "DATA",
    0x1: "HEADERS",
    0x2: "PRIORITY",
    0x3: "RST_STREAM",
    0x4: "SETTINGS",
    0x5: "PUSH_PROMISE",
    0x6: "PING",
    0x7: "GOAWAY",
    0x8: "WINDOW_UPDATE",
    0x9: "CONTINUATION",
    0xA: "ALTSVC",
}

#: Setting names (RFC 9113 §6.5.2, RFC 8441, gRPC); other identifiers are shown in hex.
SETTING_NAMES = {
    SettingsFrame.HEADER_TABLE_SIZE: "HEADER_TABLE_SIZE",
    SettingsFrame.ENABLE_PUSH: "ENABLE_PUSH",
    SettingsFrame.MAX_CONCURRENT_STREAMS: "MAX_CONCURRENT_STREAMS",
    SettingsFrame.INITIAL_WINDOW_SIZE: "INITIAL_WINDOW_SIZE",
    SettingsFrame.MAX_FRAME_SIZE: "MAX_FRAME_SIZE",
    SettingsFrame.MAX_HEADER_LIST_SIZE: "MAX_HEADER_LIST_SIZE",
    SettingsFrame.ENABLE_CONNECT_PROTOCOL: "ENABLE_CONNECT_PROTOCOL",
    # gRPC's own extension setting (grpc-core chttp2): -bin metadata may go unencoded.
    0xFE03: "GRPC_ALLOW_TRUE_BINARY_METADATA",
}

#: HTTP/2 error codes (RFC 9113 §7), as carried by RST_STREAM and GOAWAY.
ERROR_CODES = {
    0x0: "NO_ERROR",
    0x1: "PROTOCOL_ERROR",
    0x2: "INTERNAL_ERROR",
    0x3: "FLOW_CONTROL_ERROR",
    0x4: "SETTINGS_TIMEOUT",
    0x5: "STREAM_CLOSED",
    0x6: "FRAME_SIZE_ERROR",
    0x7: "REFUSED_STREAM",
    0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR",
    0xA: "CONNECT_ERROR",
    0xB: "ENHANCE_YOUR_CALM",
    0xC: "INADEQUATE_SECURITY",
    0xD: "HTTP_1_1_REQUIRED",
}

#: grpc-status numbers to names ("0" → "OK", "5" → "NOT_FOUND").
GRPC_CODES = {code.value[0]: code.name for code in grpc.StatusCode}

#: Header blocks larger than this are not decoded (gRPC's own limit is far lower).
_MAX_HEADER_LIST = 1 << 20

#: A message bigger than this (uncompressed) is summarised, not decoded into fields.
DECODE_MESSAGE_BYTES = 64 * 1024
#: Decoded fields kept in all, counted in message bytes plus ``_MESSAGE_OVERHEAD`` each
#: (the dicts take 5 to 20 times that): past it, the oldest keep a summary only.
KEEP_DECODED_BYTES = 4 * 1024 * 1024
_MESSAGE_OVERHEAD = 256
#: Messages kept per call and direction: a long stream keeps its newest, counts the rest.
MESSAGES_PER_CALL = 100
#: A compressed message is never inflated past the gRPC message limit (nor is a zip bomb).
_MAX_INFLATED = 16 * 1024 * 1024
_SHORT = 80  # longer strings are shown by their length in a summary


def _error_name(code: int) -> str:
    return ERROR_CODES.get(code, f"0x{code:x}")


# -- records ----------------------------------------------------------------------


@dataclass(frozen=True)
class FrameRecord:
    """One HTTP/2 frame as it crossed the tap (or the connection preface).

    ``direction`` is ``"client→server"`` or ``"server→client"``; ``length`` is
    the frame's payload length from its 9-byte header; ``detail`` holds what
    was decoded from the payload (headers, settings, gRPC messages...).
    """

    time: float  # wall clock, time.time(), when the bytes reached the tap
    direction: str
    connection: int
    stream: int
    type: str  # "HEADERS", "DATA", ... or "PREFACE"
    flags: tuple[str, ...]
    length: int
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "direction": self.direction,
            "connection": self.connection,
            "stream": self.stream,
            "type": self.type,
            "flags": list(self.flags),
            "length": self.length,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class CallRecord:
    """One gRPC call, i.e. one HTTP/2 stream, as seen on the wire.

    ``method`` is the short name (``"Version"``), ``path`` the HTTP/2 ``:path``
    (``"/runtime.v1.RuntimeService/Version"``). ``status`` is the number in the
    ``grpc-status`` trailer and ``code`` its name (``"OK"``, ``"NOT_FOUND"``);
    both are empty while the call is in flight. ``duration`` (seconds) runs from
    the request HEADERS to the trailers (or RST_STREAM), ``None`` until then.
    """

    connection: int
    stream: int
    path: str
    service: str
    method: str
    started: float
    duration: float | None
    request_headers: list[tuple[str, str]]
    response_headers: list[tuple[str, str]]
    request_messages: list[dict[str, Any]]
    response_messages: list[dict[str, Any]]
    trailers: list[tuple[str, str]]
    status: int | None
    code: str
    message: str  # grpc-message, percent-decoded
    reset: str = ""  # the RST_STREAM error code name, if the stream was reset
    requests_dropped: int = 0  # older request messages not kept (MESSAGES_PER_CALL)
    responses_dropped: int = 0  # older response messages not kept
    note: str = ""  # why this record is incomplete, e.g. the tap stopped decoding

    @property
    def ok(self) -> bool:
        return self.status == 0

    @property
    def finished(self) -> bool:
        return self.duration is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "connection": self.connection,
            "stream": self.stream,
            "path": self.path,
            "service": self.service,
            "method": self.method,
            "started": self.started,
            "duration": self.duration,
            "request_headers": [list(h) for h in self.request_headers],
            "response_headers": [list(h) for h in self.response_headers],
            "request_messages": self.request_messages,
            "response_messages": self.response_messages,
            "trailers": [list(h) for h in self.trailers],
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "reset": self.reset,
            "requests_dropped": self.requests_dropped,
            "responses_dropped": self.responses_dropped,
            "note": self.note,
        }


# -- message types from descriptors ---------------------------------------------


@functools.cache
def _file_descriptors() -> tuple[Any, ...]:
    """crilab's generated descriptors (importing them also fills the default pool)."""
    from .. import stubs

    found = []
    for name in ("api_pb2", "helloworld_pb2", "control_pb2"):
        try:
            found.append(stubs.load(name).DESCRIPTOR)
        except Exception:  # a broken proto must not stop the tap
            continue
    return tuple(found)


def _find_service(full_name: str) -> Any:
    for file in _file_descriptors():
        for service in file.services_by_name.values():
            if service.full_name == full_name:
                return service
    try:  # anything else this process has loaded, e.g. grpc.health.v1.Health
        return descriptor_pool.Default().FindServiceByName(full_name)
    except KeyError:
        return None


@functools.lru_cache(maxsize=1024)
def message_classes(path: str) -> tuple[type | None, type | None]:
    """``(request class, response class)`` for a ``:path``, or ``(None, None)``.

    >>> message_classes("/runtime.v1.RuntimeService/Version")[1].__name__
    'VersionResponse'
    """
    service_name, _, method_name = path.lstrip("/").rpartition("/")
    service = _find_service(service_name) if service_name else None
    method = service.methods_by_name.get(method_name) if service is not None else None
    if method is None:
        return None, None
    return (
        message_factory.GetMessageClass(method.input_type),
        message_factory.GetMessageClass(method.output_type),
    )


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _SHORT:
        return f"({len(value)} characters)"
    if isinstance(value, bytes):
        return f"({len(value)} bytes)"
    return value


def summarise(message: Any) -> dict[str, Any]:
    """The top-level fields of a protobuf message, each as a count, a size or a short value."""
    out: dict[str, Any] = {}
    for descriptor, value in message.ListFields():
        if descriptor.is_repeated:
            out[descriptor.name] = f"({len(value)} items)"
        elif descriptor.message_type is not None:
            out[descriptor.name] = f"({descriptor.message_type.name}, {value.ByteSize()} bytes)"
        else:
            out[descriptor.name] = _short(value)
    return out


def _summarise_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The same for fields already decoded into a dict (``MessageToDict``'s form)."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if isinstance(value, list):
            out[name] = f"({len(value)} items)"
        elif isinstance(value, dict):
            out[name] = f"({len(value)} fields)"
        else:
            out[name] = _short(value)
    return out


def _inflate(payload: bytes, encoding: str) -> bytes:
    """Decompress gzip or deflate, refusing to grow past ``_MAX_INFLATED`` bytes."""
    wbits = zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    data = inflater.decompress(payload, _MAX_INFLATED + 1)
    if len(data) > _MAX_INFLATED:
        raise ValueError(f"it inflates to more than {_MAX_INFLATED} bytes, the gRPC limit")
    if not inflater.eof:
        raise ValueError("the compressed data is cut short")
    return data


def decode_message(
    prefix: bytes, payload: bytes, cls: type | None, encoding: str
) -> dict[str, Any]:
    """One gRPC length-prefixed message: its prefix, then its fields if the type is known.

    Every record has the keys ``fields`` (a dict, or ``None``), ``summary`` (top-level
    fields in brief, for a message too big to decode or whose fields were dropped
    later) and ``note``: the capture updates their values in place, never its keys.
    """
    compressed = bool(prefix[0])
    out: dict[str, Any] = {
        "compressed": compressed,
        "length": len(payload),
        "prefix": prefix.hex(" "),
        "message_type": cls.DESCRIPTOR.full_name if cls is not None else None,
        "fields": None,
        "summary": None,
        "note": "",
    }
    if cls is None:
        out["note"] = "unknown method: the bytes are shown, not decoded"
        out["raw"] = payload[:64].hex(" ")
        return out
    data = payload
    if compressed:
        if encoding not in ("gzip", "deflate"):
            out["note"] = f"compressed with {encoding or 'an unnamed encoding'}; not decoded"
            return out
        try:
            data = _inflate(payload, encoding)
        except (ValueError, zlib.error) as exc:
            out["error"] = f"could not decompress ({encoding}): {exc}"
            return out
        out["uncompressed_length"] = len(data)
    try:
        message = cls.FromString(data)
        if len(data) > DECODE_MESSAGE_BYTES:
            out["summary"] = summarise(message)
            out["note"] = (
                f"{len(data)} bytes: over the {DECODE_MESSAGE_BYTES} bytes the tap decodes "
                "for display, so only its top-level fields are summarised"
            )
        else:
            out["fields"] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    except Exception as exc:
        out["error"] = f"not a valid {cls.DESCRIPTOR.full_name}: {exc}"
        out["raw"] = payload[:64].hex(" ")
    return out


# -- per stream and per call state ------------------------------------------------


class _CallState:
    """The mutable record of one stream, turned into a ``CallRecord`` on demand."""

    def __init__(self, connection: int, stream: int, started: float) -> None:
        self.connection = connection
        self.stream = stream
        self.started = started
        self.path = ""
        self.ended: float | None = None
        self.request_headers: list[tuple[str, str]] = []
        self.response_headers: list[tuple[str, str]] = []
        self.trailers: list[tuple[str, str]] = []
        # per direction: the newest messages (at most MESSAGES_PER_CALL), and how many
        # older ones were let go
        self.messages: dict[str, collections.deque[dict[str, Any]]] = {
            CLIENT_TO_SERVER: collections.deque(),
            SERVER_TO_CLIENT: collections.deque(),
        }
        self.dropped = {CLIENT_TO_SERVER: 0, SERVER_TO_CLIENT: 0}
        self.status: int | None = None
        self.message = ""
        self.reset = ""
        self.note = ""
        # per direction: bytes of gRPC messages not yet complete, and grpc-encoding
        self.pending = {CLIENT_TO_SERVER: bytearray(), SERVER_TO_CLIENT: bytearray()}
        self.encoding = {CLIENT_TO_SERVER: "", SERVER_TO_CLIENT: ""}

    def snapshot(self) -> CallRecord:
        service, _, method = self.path.lstrip("/").rpartition("/")
        if self.status is not None:
            code = GRPC_CODES.get(self.status, str(self.status))
        elif self.reset:
            code = "CANCELLED" if self.reset == "CANCEL" else f"RST_STREAM {self.reset}"
        else:
            code = ""
        return CallRecord(
            connection=self.connection,
            stream=self.stream,
            path=self.path,
            service=service,
            method=method,
            started=self.started,
            duration=None if self.ended is None else max(0.0, self.ended - self.started),
            request_headers=list(self.request_headers),
            response_headers=list(self.response_headers),
            request_messages=list(self.messages[CLIENT_TO_SERVER]),
            response_messages=list(self.messages[SERVER_TO_CLIENT]),
            trailers=list(self.trailers),
            status=self.status,
            code=code,
            message=self.message,
            reset=self.reset,
            requests_dropped=self.dropped[CLIENT_TO_SERVER],
            responses_dropped=self.dropped[SERVER_TO_CLIENT],
            note=self.note,
        )


class _Direction:
    """One direction of one connection: a byte buffer and an HPACK decoder."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.buffer = bytearray()
        self.want_preface = name == CLIENT_TO_SERVER
        self.decoder = hpack.Decoder(max_header_list_size=_MAX_HEADER_LIST)
        # A header block spread over HEADERS + CONTINUATION frames:
        # (stream, type of the first frame, END_STREAM of the first frame, fragments)
        self.block: tuple[int, str, bool, bytearray] | None = None
        self.broken = ""  # why this direction is no longer decoded
        self.hpack_broken = ""


# -- the capture ------------------------------------------------------------------


class Capture:
    """The bounded record of everything a tap saw: frames and calls.

    ``feed`` is called from one thread only (the tap's decoder thread); the
    snapshots (``frames``, ``calls``) may be taken from any thread. ``capacity``
    bounds the frames, the calls and the messages kept; ``keep_decoded_bytes``
    the decoded fields; ``messages_per_call`` the messages of one call and direction.
    """

    def __init__(
        self,
        capacity: int = 10_000,
        *,
        keep_decoded_bytes: int = KEEP_DECODED_BYTES,
        messages_per_call: int = MESSAGES_PER_CALL,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1 frame")
        self.capacity = capacity
        self.keep_decoded_bytes = keep_decoded_bytes
        self.messages_per_call = max(1, messages_per_call)
        self._lock = threading.Lock()
        self._frames: collections.deque[FrameRecord] = collections.deque(maxlen=capacity)
        self._calls: collections.OrderedDict[tuple[int, int], _CallState] = (
            collections.OrderedDict()
        )
        self._connections: dict[int, dict[str, _Direction]] = {}
        # every kept message, oldest first: (message, its call, direction) ...
        self._kept: collections.deque[tuple[dict[str, Any], _CallState, str]] = collections.deque()
        # ... and those still holding decoded fields, with what they count
        self._decoded: collections.deque[tuple[dict[str, Any], int]] = collections.deque()
        self._decoded_bytes = 0
        self.dropped = 0  # frames pushed out of the bounded capture
        self.summarised = 0  # messages whose fields were dropped for the byte budget

    # -- reading ---------------------------------------------------------------

    @property
    def frames(self) -> list[FrameRecord]:
        with self._lock:
            return list(self._frames)

    @property
    def calls(self) -> list[CallRecord]:
        with self._lock:
            return [state.snapshot() for state in self._calls.values()]

    @property
    def decoded_bytes(self) -> int:
        """What the messages still holding decoded fields count against the budget."""
        with self._lock:
            return self._decoded_bytes

    def clear(self) -> None:
        """Forget the records; the decoders keep their state (HPACK needs it)."""
        with self._lock:
            self._frames.clear()
            self._calls.clear()
            self._kept.clear()
            self._decoded.clear()
            self._decoded_bytes = 0
            self.dropped = 0
            self.summarised = 0

    # -- writing ---------------------------------------------------------------

    def _add(self, record: FrameRecord) -> None:
        with self._lock:
            if len(self._frames) == self._frames.maxlen:
                self.dropped += 1
            self._frames.append(record)

    def note(self, connection: int, direction: str, text: str, when: float) -> None:
        """A record about the proxy itself (e.g. the upstream refused a connection)."""
        self._add(FrameRecord(when, direction, connection, 0, "PROXY", (), 0, {"note": text}))

    def gap(self, connection: int, direction: str, text: str, when: float) -> None:
        """Bytes of one direction went undecoded (the tap fell behind): stop decoding it.

        HPACK's table and the frame boundaries cannot be recovered after a gap, so the
        direction stays undecoded until its connection closes; its calls say why.
        """
        sides = self._connections.get(connection)
        if sides is None:
            self.opened(connection)
            sides = self._connections[connection]
        side = sides[direction]
        side.broken = text
        side.buffer.clear()
        side.block = None
        with self._lock:
            for (conn, _), state in self._calls.items():
                if conn == connection and state.ended is None and not state.note:
                    state.note = text
        self.note(connection, direction, text, when)

    def opened(self, connection: int) -> None:
        self._connections[connection] = {
            CLIENT_TO_SERVER: _Direction(CLIENT_TO_SERVER),
            SERVER_TO_CLIENT: _Direction(SERVER_TO_CLIENT),
        }

    def closed(self, connection: int) -> None:
        self._connections.pop(connection, None)

    def feed(self, connection: int, direction: str, data: bytes, when: float) -> None:
        """Take the next bytes of one direction; emit every frame they complete."""
        sides = self._connections.get(connection)
        if sides is None:
            self.opened(connection)
            sides = self._connections[connection]
        side = sides[direction]
        if side.broken:
            return
        side.buffer += data
        if side.want_preface and not self._take_preface(connection, side, when):
            return
        buf = side.buffer
        offset = 0
        while len(buf) - offset >= _FRAME_HEADER:
            # Copies, not views: the buffer is trimmed below, and a frame may keep its body.
            header = memoryview(bytes(buf[offset : offset + _FRAME_HEADER]))
            frame, length = Frame.parse_frame_header(header)
            end = offset + _FRAME_HEADER + length
            if len(buf) < end:
                break
            raw_flags = buf[offset + 4]
            body = memoryview(bytes(buf[offset + _FRAME_HEADER : end]))
            self._frame(connection, sides, side, frame, body, length, raw_flags, when)
            offset = end
        if offset:
            del buf[:offset]

    def _take_preface(self, connection: int, side: _Direction, when: float) -> bool:
        have = bytes(side.buffer[: len(PREFACE)])
        if not PREFACE.startswith(have):
            side.broken = "the client did not start with the HTTP/2 preface: not HTTP/2"
            side.buffer.clear()
            self._add(
                FrameRecord(
                    when,
                    side.name,
                    connection,
                    0,
                    "NOT_HTTP2",
                    (),
                    len(have),
                    {"error": side.broken, "first_bytes": have[:24].hex(" ")},
                )
            )
            return False
        if len(have) < len(PREFACE):
            return False
        del side.buffer[: len(PREFACE)]
        side.want_preface = False
        self._add(
            FrameRecord(
                when,
                side.name,
                connection,
                0,
                "PREFACE",
                (),
                len(PREFACE),
                {"preface": PREFACE.decode("ascii")},
            )
        )
        return True

    def _frame(
        self,
        connection: int,
        sides: dict[str, _Direction],
        side: _Direction,
        frame: Frame,
        body: memoryview,
        length: int,
        raw_flags: int,
        when: float,
    ) -> None:
        kind = FRAME_TYPES.get(getattr(frame, "type", -1), "")
        if isinstance(frame, ExtensionFrame):
            kind = f"UNKNOWN(0x{frame.type:x})"
        flags = tuple(sorted(frame.flags)) if not isinstance(frame, ExtensionFrame) else ()
        detail: dict[str, Any]
        try:
            frame.parse_body(body)
            detail = self._detail(connection, sides, side, frame, when)
        except Exception as exc:  # a bad frame is shown, never fatal
            detail = {"error": f"{type(exc).__name__}: {exc}"}
        if isinstance(frame, ExtensionFrame):
            detail.setdefault("flag_byte", f"0x{raw_flags:02x}")
        self._add(
            FrameRecord(when, side.name, connection, frame.stream_id, kind, flags, length, detail)
        )

    def _detail(
        self,
        connection: int,
        sides: dict[str, _Direction],
        side: _Direction,
        frame: Frame,
        when: float,
    ) -> dict[str, Any]:
        if isinstance(frame, DataFrame):
            return self._data(connection, side, frame, when)
        if isinstance(frame, HeadersFrame | PushPromiseFrame | ContinuationFrame):
            return self._header_frame(connection, side, frame, when)
        if isinstance(frame, SettingsFrame):
            settings = {
                SETTING_NAMES.get(ident, f"0x{ident:04x}"): value
                for ident, value in frame.settings.items()
            }
            table = frame.settings.get(SettingsFrame.HEADER_TABLE_SIZE)
            if table is not None:
                # Settings bind the *peer's* encoder: so the other direction's decoder.
                other = SERVER_TO_CLIENT if side.name == CLIENT_TO_SERVER else CLIENT_TO_SERVER
                sides[other].decoder.max_allowed_table_size = table
            return {"ack": "ACK" in frame.flags, "settings": settings}
        if isinstance(frame, PingFrame):
            return {"ack": "ACK" in frame.flags, "opaque_data": frame.opaque_data.hex(" ")}
        if isinstance(frame, WindowUpdateFrame):
            return {"increment": frame.window_increment}
        if isinstance(frame, RstStreamFrame):
            name = _error_name(frame.error_code)
            state = self._call(connection, frame.stream_id)
            if state is not None:
                with self._lock:
                    state.reset = name
                    if state.ended is None:
                        state.ended = when
            return {"error_code": frame.error_code, "error": name}
        if isinstance(frame, GoAwayFrame):
            return {
                "last_stream_id": frame.last_stream_id,
                "error_code": frame.error_code,
                "error": _error_name(frame.error_code),
                "debug_data": frame.additional_data.decode("utf-8", "replace"),
            }
        if isinstance(frame, PriorityFrame):
            return {
                "depends_on": frame.depends_on,
                "weight": frame.stream_weight,
                "exclusive": frame.exclusive,
            }
        if isinstance(frame, ExtensionFrame):
            return {"body": frame.body[:64].hex(" ")}
        return {}

    # -- headers -----------------------------------------------------------------

    def _header_frame(
        self, connection: int, side: _Direction, frame: Frame, when: float
    ) -> dict[str, Any]:
        fragment = frame.data
        if isinstance(frame, ContinuationFrame):
            if side.block is None or side.block[0] != frame.stream_id:
                return {"error": "CONTINUATION without a HEADERS frame before it"}
            side.block[3].extend(fragment)
        else:
            first = "PUSH_PROMISE" if isinstance(frame, PushPromiseFrame) else "HEADERS"
            end = "END_STREAM" in frame.flags
            side.block = (frame.stream_id, first, end, bytearray(fragment))
        # END_STREAM and the block's kind belong to the first frame, even after CONTINUATIONs
        stream, first, end_stream, block = side.block
        detail: dict[str, Any] = {}
        if isinstance(frame, PushPromiseFrame):
            detail["promised_stream_id"] = frame.promised_stream_id
        if isinstance(frame, HeadersFrame) and "PRIORITY" in frame.flags:
            detail["priority"] = {"depends_on": frame.depends_on, "weight": frame.stream_weight}
        if "END_HEADERS" not in frame.flags:
            detail["fragment_bytes"] = len(fragment)
            detail["awaiting"] = "CONTINUATION"
            return detail
        side.block = None
        if isinstance(frame, ContinuationFrame):
            detail["block_bytes"] = len(block)
        headers = self._decode_headers(side, bytes(block))
        if isinstance(headers, str):
            detail["error"] = headers
            return detail
        detail["headers"] = [list(h) for h in headers]
        if first == "HEADERS":
            detail["kind"] = self._on_headers(connection, side, stream, headers, end_stream, when)
        detail["end_stream"] = end_stream
        return detail

    @staticmethod
    def _decode_headers(side: _Direction, block: bytes) -> list[tuple[str, str]] | str:
        if side.hpack_broken:
            return f"not decoded: {side.hpack_broken}"
        try:
            raw = side.decoder.decode(block, raw=True)
        except Exception as exc:
            # The dynamic table is now out of step with the encoder's: stop for good.
            side.hpack_broken = f"HPACK state lost after {type(exc).__name__}: {exc}"
            return side.hpack_broken
        return [
            (bytes(name).decode("utf-8", "replace"), bytes(value).decode("utf-8", "replace"))
            for name, value in raw
        ]

    def _on_headers(
        self,
        connection: int,
        side: _Direction,
        stream: int,
        headers: list[tuple[str, str]],
        end_stream: bool,
        when: float,
    ) -> str:
        values = dict(headers)
        with self._lock:
            if side.name == CLIENT_TO_SERVER:
                state = self._calls.get((connection, stream))
                if state is None:
                    state = _CallState(connection, stream, when)
                    self._calls[(connection, stream)] = state
                    while len(self._calls) > self.capacity:
                        self._calls.popitem(last=False)
                    state.path = values.get(":path", "")
                    state.request_headers = list(headers)
                    state.encoding[CLIENT_TO_SERVER] = values.get("grpc-encoding", "")
                    answers = self._connections.get(connection, {}).get(SERVER_TO_CLIENT)
                    if answers is not None and answers.broken:
                        state.note = answers.broken  # its answer will never be decoded
                    return "request headers"
                state.trailers = list(headers)  # a client's trailers: unusual in gRPC
                return "request trailers"
            state = self._calls.get((connection, stream))
            if state is None:  # a stream whose request was pushed out of the capture
                state = _CallState(connection, stream, when)
            kind = "response headers"
            if ":status" in values and not state.response_headers:
                state.response_headers = list(headers)
                state.encoding[SERVER_TO_CLIENT] = values.get("grpc-encoding", "")
            if end_stream:  # trailers (or "trailers-only": one block with :status too)
                kind = "trailers-only" if ":status" in values else "trailers"
                state.trailers = list(headers)
                status = values.get("grpc-status", "")
                state.status = int(status) if status.isdigit() else None
                state.message = urllib.parse.unquote(values.get("grpc-message", ""))
                state.ended = when
            return kind

    # -- data ----------------------------------------------------------------------

    def _call(self, connection: int, stream: int) -> _CallState | None:
        with self._lock:
            return self._calls.get((connection, stream))

    def _data(
        self, connection: int, side: _Direction, frame: DataFrame, when: float
    ) -> dict[str, Any]:
        detail: dict[str, Any] = {"end_stream": "END_STREAM" in frame.flags}
        if frame.pad_length:
            detail["padding"] = frame.pad_length
        state = self._call(connection, frame.stream_id)
        if state is None:
            detail["note"] = "a stream this capture never saw open; bytes not decoded"
            return detail
        pending = state.pending[side.name]
        pending += frame.data
        request_cls, response_cls = message_classes(state.path)
        cls = request_cls if side.name == CLIENT_TO_SERVER else response_cls
        messages = []
        offset = 0
        while len(pending) - offset >= 5:
            size = int.from_bytes(pending[offset + 1 : offset + 5], "big")
            if len(pending) - offset - 5 < size:
                break
            prefix = bytes(pending[offset : offset + 5])
            payload = bytes(pending[offset + 5 : offset + 5 + size])
            messages.append(decode_message(prefix, payload, cls, state.encoding[side.name]))
            offset += 5 + size
        if offset:
            del pending[:offset]
        detail["messages"] = messages
        if pending:
            waiting: dict[str, Any] = {"have": len(pending)}
            if len(pending) >= 5:
                waiting["length"] = int.from_bytes(pending[1:5], "big")
            detail["incomplete_message"] = waiting
        if messages:
            self._keep(state, side.name, messages)
        return detail

    def _keep(self, state: _CallState, direction: str, messages: list[dict[str, Any]]) -> None:
        """Add messages to their call, then bring every bound back in line, oldest first."""
        with self._lock:
            target = state.messages[direction]
            for message in messages:
                target.append(message)
                self._kept.append((message, state, direction))
                if message["fields"] is not None:
                    cost = message["length"] + _MESSAGE_OVERHEAD
                    self._decoded.append((message, cost))
                    self._decoded_bytes += cost
            while len(target) > self.messages_per_call:
                target.popleft()
                state.dropped[direction] += 1
            while len(self._kept) > self.capacity:
                old, owner, way = self._kept.popleft()
                kept = owner.messages[way]
                if kept and kept[0] is old:  # (else the per-call bound let it go already)
                    kept.popleft()
                    owner.dropped[way] += 1
            while self._decoded_bytes > self.keep_decoded_bytes and self._decoded:
                old, cost = self._decoded.popleft()
                self._decoded_bytes -= cost
                fields = old["fields"]
                if fields is None:
                    continue
                # in place, values only: a reader iterating the dict never sees it resize
                old["summary"] = _summarise_fields(fields)
                old["note"] = (
                    "decoded fields dropped to keep the capture within its "
                    f"{self.keep_decoded_bytes} byte budget; a summary is kept"
                )
                old["fields"] = None
                self.summarised += 1
