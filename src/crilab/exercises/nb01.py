"""Exercises of notebook 01 (gRPC basics): the wire format and status codes."""

from __future__ import annotations

import grpc

from . import Verdict, exercise, right, wrong

# --- 01.varint: field 1 = 150 on the wire -------------------------------------------------

_TARGET = b"\x08\x96\x01"
_WIRE_TYPES = {0: "varint", 1: "64-bit", 2: "length-delimited", 5: "32-bit"}


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    """The varint starting at ``data[i]`` and the index after it."""
    value = shift = 0
    start = i
    while True:
        if i >= len(data):
            raise ValueError(
                f"the varint starting at byte {start} never ends: byte {i - 1} "
                f"(0x{data[i - 1]:02x}) has its top bit set, which means 'another byte "
                "follows', but the bytes end there"
            )
        byte = data[i]
        value |= (byte & 0x7F) << shift
        shift += 7
        i += 1
        if byte < 0x80:
            return value, i


def _fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """Decode a message: (field number, wire type, value) per field, or ValueError."""
    fields: list[tuple[int, int, int | bytes]] = []
    i = 0
    while i < len(data):
        at = i
        tag, i = _read_varint(data, i)
        number, wire_type = tag >> 3, tag & 0x7
        if number == 0:
            raise ValueError(
                f"byte {at} (0x{data[at]:02x}) is a tag for field number 0, which does not "
                "exist (a tag is the field number shifted left by 3, then | wire type)"
            )
        if wire_type not in _WIRE_TYPES:
            raise ValueError(
                f"byte {at} (0x{data[at]:02x}) is a tag with wire type {wire_type}, "
                "which protobuf does not use (0, 1, 2 and 5 are the ones in use)"
            )
        if wire_type == 0:
            value, i = _read_varint(data, i)
        elif wire_type == 2:
            size, i = _read_varint(data, i)
            if i + size > len(data):
                raise ValueError(f"field {number} says {size} bytes follow, but fewer do")
            value, i = data[i : i + size], i + size
        else:
            size = 8 if wire_type == 1 else 4
            if i + size > len(data):
                raise ValueError(f"field {number} needs {size} more bytes, but fewer follow")
            value, i = int.from_bytes(data[i : i + size], "little"), i + size
        fields.append((number, wire_type, value))
    return fields


def _meaning(fields: list[tuple[int, int, int | bytes]]) -> str:
    return "; ".join(
        f"field {number} ({_WIRE_TYPES[wire_type]}) = {value!r}"
        for number, wire_type, value in fields
    )


def _explain_bytes(data: bytes) -> Verdict:
    shown = data.hex(" ") or "(no bytes)"
    if data == _TARGET:
        return right(
            "08 is the tag (field number 1 << 3 | wire type 0 = 0x08), and 96 01 is 150 as a "
            "varint: the low 7 bits (0010110) come first, with the top bit set to say 'another "
            "byte follows', then the remaining 1. It is the example of protobuf's own encoding "
            "guide: api_pb2.Int64Value(value=150).SerializeToString() gives these three bytes, "
            "as does any message whose field 1 is an int32, int64 or uint32 holding 150."
        )
    if not data:
        return wrong(
            "b'' is an empty message: every field at its default. proto3 sends nothing for "
            "a field that is 0, but 150 is not 0, so field 1 must appear."
        )
    try:
        value, end = _read_varint(data, 0)
    except ValueError:
        value, end = -1, 0
    if value == 150 and end == len(data):
        return wrong(
            f"{shown} is 150 as a varint: the value alone. On the wire every field starts "
            "with its tag, (field number << 3) | wire type, so the value needs a tag byte "
            "in front of it."
        )
    if data[:1] == b"\x08" and data[1:] in (b"\x01\x96", b"\x01\x16"):
        return wrong(
            f"{shown} starts with the right tag, but the varint's 7-bit groups are in the "
            "wrong order: a varint puts the LOWEST 7 bits first, then the higher ones."
        )
    try:
        fields = _fields(data)
    except ValueError as exc:
        return wrong(f"Your bytes {shown} are not a valid message: {exc}.")
    meaning = f"Your bytes {shown} mean: {_meaning(fields)}."
    if len(fields) != 1:
        return wrong(f"{meaning} That is {len(fields)} fields; the message has one.")
    number, wire_type, value = fields[0]
    if number != 1:
        return wrong(
            f"{meaning} The tag names field {number}: a tag is (field number << 3) | wire "
            "type, so the field number is the tag shifted right by 3."
        )
    if wire_type != 0:
        return wrong(
            f"{meaning} Wire type {wire_type} ({_WIRE_TYPES[wire_type]}) is for "
            f"{'strings, bytes and messages' if wire_type == 2 else 'fixed-size numbers'}; "
            "an int32/int64/uint32 field is a varint, wire type 0."
        )
    if value == 150:
        return wrong(
            f"{meaning} That decodes to 150, but in more bytes than needed: protobuf writes "
            "the shortest varint, with no byte of only continuation."
        )
    return wrong(
        f"{meaning} The tag is right but the varint holds {value}, not 150. A varint carries "
        "7 bits per byte, LOWEST bits first; the top bit of each byte says whether another "
        "byte follows. 150 = 0b1_0010110."
    )


@exercise(
    "01.varint",
    title="Field 1 = 150, by hand",
    hint=(
        "Two parts: the tag, (1 << 3) | 0 for field 1 as a varint, then 150 as a varint: "
        "7 bits per byte, lowest bits first, top bit set on every byte but the last. "
        "Write bytes as b'\\x..\\x..'."
    ),
    solution=r"""
        answer = b"\x08\x96\x01"
    """,
)
def _varint(answer: object) -> Verdict:
    if isinstance(answer, bytearray | memoryview):
        answer = bytes(answer)
    if isinstance(answer, bytes):
        return _explain_bytes(answer)
    if isinstance(answer, str):
        try:
            digits = bytes.fromhex(answer)
        except ValueError:
            digits = None
        if digits == _TARGET:
            return wrong(
                f"{answer!r} is text that spells the right hex digits; the answer must be "
                f"bytes: bytes.fromhex({answer!r}) or b'\\x08\\x96\\x01'."
            )
        return wrong(
            f"{answer!r} is a str (text). SerializeToString() returns bytes: write a bytes "
            "literal such as b'\\x08', or bytes.fromhex('08 ...')."
        )
    if isinstance(answer, int):
        if answer == 150:
            return wrong(
                "150 is the value of the field; the question is how it looks on the wire: "
                "the bytes of the tag and of the varint."
            )
        return wrong(f"{answer!r} is one number; the answer is a few bytes, such as b'\\x08...'.")
    if isinstance(answer, list | tuple) and all(isinstance(b, int) for b in answer):
        same = all(0 <= b < 256 for b in answer) and bytes(answer) == _TARGET
        return wrong(
            f"{answer!r} is a {type(answer).__name__} of numbers"
            + (" (the right ones!)" if same else "")
            + "; make it bytes: bytes(...) or a b'\\x..' literal."
        )
    return wrong(f"{answer!r} is of type {type(answer).__name__}; the answer is bytes: b'\\x..'.")


# --- 01.unavailable: the status code of a call nobody answers ------------------------------

_CODE_MEANINGS = {
    "OK": "the call succeeded. Did you call through the notebook's working channel instead "
    "of `nowhere`?",
    "CANCELLED": "the caller cancelled the call; nobody cancelled this one.",
    "UNKNOWN": "the server failed with an error that has no better code; here there is no "
    "server at all.",
    "INVALID_ARGUMENT": "a server judged the request wrong (like the empty name above); here "
    "no server exists to judge anything.",
    "DEADLINE_EXCEEDED": "the call ran out of time. You get it when the client waits for a "
    "server (wait_for_ready=True) until the deadline fires; without waiting, gRPC fails as "
    "soon as the connection does.",
    "NOT_FOUND": "a server says a thing it was asked about (a container ID, an image) does "
    "not exist; a missing socket never reaches a server.",
    "ALREADY_EXISTS": "a server refuses to create something that exists.",
    "PERMISSION_DENIED": "a server refuses the caller.",
    "RESOURCE_EXHAUSTED": "a limit was hit (message size, quota).",
    "FAILED_PRECONDITION": "a server says the system is in the wrong state for the call. "
    "It appears inside the details here, from the socket connect, but it is not the code.",
    "ABORTED": "a server gave up because of a conflict.",
    "OUT_OF_RANGE": "a request went past a valid range.",
    "UNIMPLEMENTED": "a server is there but does not have the method.",
    "INTERNAL": "something broke inside gRPC or the server.",
    "UNAVAILABLE": "",
    "DATA_LOSS": "data was lost or corrupted.",
    "UNAUTHENTICATED": "the call had no valid credentials.",
}


@exercise(
    "01.unavailable",
    title="The status code of a call nobody answers",
    hint=(
        "Wrap the call in try/except grpc.RpcError as err: and keep err.code(). "
        "Give the call a timeout so it cannot hang."
    ),
    solution="""
        nowhere = grpc.insecure_channel("unix:/nonexistent/crilab.sock")
        try:
            helloworld_pb2_grpc.GreeterStub(nowhere).SayHello(
                helloworld_pb2.HelloRequest(name="Ada"), timeout=2
            )
        except grpc.RpcError as err:
            code = err.code()
    """,
)
def _unavailable(code: object) -> Verdict:
    if isinstance(code, grpc.RpcError):
        return wrong(
            f"That is the error itself (a {type(code).__name__}); its status code is "
            "err.code(). Put that in `code`."
        )
    if isinstance(code, str) and code.upper().removeprefix("STATUSCODE.") in _CODE_MEANINGS:
        code = grpc.StatusCode[code.upper().removeprefix("STATUSCODE.")]
    numbered = [c for c in grpc.StatusCode if c.value[0] == code]
    if isinstance(code, int) and numbered:
        return wrong(
            f"{code} is the number of {numbered[0].name} on the wire (the grpc-status "
            f"trailer); err.code() gives grpc.StatusCode.{numbered[0].name}. Is "
            f"{numbered[0].name} what you got? Put the value err.code() returns in `code`."
        )
    if not isinstance(code, grpc.StatusCode):
        return wrong(
            f"{code!r} is of type {type(code).__name__}, not a status code, which looks "
            "like grpc.StatusCode.NAME, the value err.code() returns."
        )
    if code is grpc.StatusCode.UNAVAILABLE:
        return right(
            "UNAVAILABLE: gRPC could not reach a server. The kubelet gets this code when "
            "containerd is not running, and crictl prints it with 'connect: no such file or "
            "directory'. gRPC's guide calls it most likely transient, the code to retry with "
            "a backoff; here the request never reached a server, so a retry is harmless."
        )
    return wrong(f"{code.name} means {_CODE_MEANINGS[code.name]}")
