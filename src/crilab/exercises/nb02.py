"""Exercises of notebook 02 (helloworld): a server stream, a request stream, a DATA frame."""

from __future__ import annotations

import itertools
import re

import grpc

from . import Verdict, exercise, right, unanswered, wrong

# --- 02.stream: collect a server stream -----------------------------------------------------

_STREAMED = re.compile(r"^(?P<greeting>.+) #(?P<n>\d+), (?P<name>.*)!$")


def _is_message(value: object, name: str) -> bool:
    descriptor = getattr(value, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", None) == f"helloworld.{name}"


@exercise(
    "02.stream",
    title="Every reply of a server stream",
    hint=(
        "stub.SayHelloStreamReply(request) returns an iterator of HelloReply messages; "
        "a list comprehension over it, taking reply.message, collects them all."
    ),
    solution="""
        request = helloworld_pb2.HelloRequest(name="Grace")
        replies = [reply.message for reply in stub.SayHelloStreamReply(request, timeout=5)]
    """,
)
def _stream(replies: object) -> Verdict:
    if isinstance(replies, grpc.Call) or hasattr(replies, "__next__"):
        return wrong(
            f"That is the stream itself (a {type(replies).__name__}): an iterator that hands "
            "out each reply as it arrives, once. Collect the messages from it into a list: "
            "[reply.message for reply in stream]."
        )
    if _is_message(replies, "HelloReply"):
        return wrong(
            "That is one HelloReply, e.g. what next(stream) gives; the stream has more. "
            "Collect the .message of every reply in a list."
        )
    if isinstance(replies, str):
        return wrong(
            f"{replies!r} is one message; a server stream sends several. Collect all of them "
            "in a list."
        )
    if not isinstance(replies, list | tuple):
        return wrong(
            f"{replies!r} is of type {type(replies).__name__}; the answer is a list of str."
        )
    if not replies:
        return wrong(
            "The list is empty. A stream can be read only once: if that stream was already "
            "read (by list(), a for loop or next()), call the method again for a fresh one."
        )
    if any(_is_message(r, "HelloReply") for r in replies):
        return wrong(
            "That is a list of HelloReply messages: right shape, but the exercise wants the "
            "text of each, reply.message."
        )
    if not all(isinstance(r, str) for r in replies):
        kinds = sorted({type(r).__name__ for r in replies})
        return wrong(f"The list holds {', '.join(kinds)}; it should hold str (reply.message).")
    parsed = [_STREAMED.match(r) for r in replies]
    if not all(parsed):
        odd = next(r for r, m in zip(replies, parsed, strict=True) if not m)
        return wrong(
            f"{odd!r} is not a streamed reply (those look like 'Hello #1, Ada!'). A reply "
            "without '#n' comes from the unary SayHello; the streaming method is "
            "SayHelloStreamReply."
        )
    names = {m["name"] for m in parsed if m}
    if names != {"Grace"}:
        return wrong(
            f"These replies greet {', '.join(sorted(names))}: the server answers the name "
            "you send. The exercise asks for Grace."
        )
    numbers = [int(m["n"]) for m in parsed if m]
    if numbers != list(range(1, len(numbers) + 1)):
        return wrong(
            f"The replies are numbered {numbers}, not 1, 2, 3... in order. Starting after "
            "#1 means the stream was partly read before (each reply comes out once): "
            "call SayHelloStreamReply again and collect the fresh stream from the start."
        )
    return right(
        f"All {len(replies)} replies, in order. The server decided how many (the Greeter "
        "sends `replies` of them, 3 by default) and the client read until the stream ended. "
        "The kubelet reads the CRI's GetContainerEvents the same way, except that stream "
        "never ends."
    )


# --- 02.bidi: a generator of requests --------------------------------------------------------

_NAMES = ("Ada", "Grace", "Linus")


def _send(requests: object) -> list[str]:
    """Send ``requests`` through SayHelloBidiStream on a private Greeter; the replies."""
    from .. import helloworld
    from ..stubs import helloworld_pb2_grpc

    with helloworld.serve() as server, helloworld.channel(server.endpoint.uri) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        return [reply.message for reply in stub.SayHelloBidiStream(requests, timeout=5)]


@exercise(
    "02.bidi",
    title="A generator of requests",
    hint=(
        "A generator function has `yield` in it: for each name, yield "
        "helloworld_pb2.HelloRequest(name=name)."
    ),
    solution='''
        def hello_requests(names):
            """Yield one HelloRequest per name, in order."""
            for name in names:
                yield helloworld_pb2.HelloRequest(name=name)
    ''',
)
def _bidi(hello_requests: object) -> Verdict:
    if hasattr(hello_requests, "__next__"):
        return wrong(
            "That is a generator already made (what calling the function returns); give "
            "check the function itself: check('02.bidi', hello_requests), no parentheses."
        )
    if not callable(hello_requests):
        return wrong(
            f"{hello_requests!r} is of type {type(hello_requests).__name__}; the answer is a "
            "function of the names."
        )
    made = hello_requests(list(_NAMES))
    if made is None or made is ...:
        return unanswered(
            "Your function returns None: its body is still ..., or it builds requests "
            "without yielding them."
        )
    if isinstance(made, list | tuple):
        return wrong(
            f"Your function returns a {type(made).__name__}. gRPC calls next() on what you "
            "pass it, which a list does not have (the call fails with 'Exception iterating "
            "requests!'); and a list must be complete before the call starts, while a "
            "generator makes each request when gRPC is ready to send it. Use yield."
        )
    if not hasattr(made, "__next__"):
        return wrong(
            f"Your function returns a {type(made).__name__}, not an iterator of requests; "
            "make it a generator with yield."
        )
    items = list(itertools.islice(made, len(_NAMES) + 1))
    for item in items:
        if isinstance(item, str):
            return wrong(
                f"Your generator yields str ({item!r}). gRPC sends messages, not text: "
                "yield helloworld_pb2.HelloRequest(name=name)."
            )
        if _is_message(item, "HelloReply"):
            return wrong(
                "Your generator yields HelloReply, the message the server sends back. A "
                "client sends HelloRequest."
            )
        if not _is_message(item, "HelloRequest"):
            return wrong(
                f"Your generator yields {type(item).__name__}; it should yield "
                "helloworld_pb2.HelloRequest messages."
            )
    sent = [item.name for item in items]
    if sent != list(_NAMES):
        return wrong(
            f"For the names {list(_NAMES)} your generator yields requests for {sent}: one "
            "request per name, in the same order, is what the server should receive."
        )
    replies = _send(hello_requests(list(_NAMES)))
    return right(
        f"A private Greeter got your three requests and answered {replies}. The generator "
        "ran on a gRPC thread, pulled one request at a time, while the replies came back "
        "on the same HTTP/2 stream: both directions at once."
    )


# --- 02.data-frame: gRPC's 5-byte prefix in a DATA frame ---------------------------------------

_PREFIX = 5  # gRPC's own: 1 byte "compressed" flag, 4 bytes big-endian length


@exercise(
    "02.data-frame",
    title="The payload of a DATA frame",
    hint=(
        "A DATA frame's payload is gRPC's 5-byte prefix followed by the serialized message; "
        'len(helloworld_pb2.HelloRequest(name="Grace").SerializeToString()) is the second part.'
    ),
    solution="""
        grace = helloworld_pb2.HelloRequest(name="Grace")
        data_length = 5 + len(grace.SerializeToString())  # gRPC's prefix, then the message
    """,
)
def _data_frame(data_length: object) -> Verdict:
    from ..stubs import helloworld_pb2

    message = len(helloworld_pb2.HelloRequest(name="Grace").SerializeToString())  # 7
    answer = _PREFIX + message
    if isinstance(data_length, str) and data_length.strip().isdigit():
        return wrong(f"{data_length!r} is text; the answer is a number of bytes, an int.")
    if isinstance(data_length, bool) or not isinstance(data_length, int):
        return wrong(
            f"{data_length!r} is of type {type(data_length).__name__}; the answer is a "
            "number of bytes, an int."
        )
    if data_length == answer:
        return right(
            f"{answer} bytes: 00 00 00 00 {message:02x}, then 0a 05 and the five letters of "
            "Grace. The prefix's length field is 4 bytes, so a message could be up to 4 GiB, "
            "but a gRPC receiver accepts 4 MiB by default (grpc.max_receive_message_length). "
            "The kubelet raises its CRI client's limit to 16 MiB, for the long answers of "
            "ListContainers on a node full of containers."
        )
    if data_length == message:
        return wrong(
            f"{message} bytes is the HelloRequest alone (0a 05 and the five letters). The "
            "DATA frame also carries gRPC's 5-byte prefix in front of it."
        )
    if data_length == answer + 9:
        return wrong(
            f"{data_length} counts the 9-byte HTTP/2 frame header too. The bytes column is "
            "the length field of that header: the payload only (10 for Ada, not 19)."
        )
    if data_length == 10:
        return wrong("10 bytes is the DATA frame of Ada. Grace has two letters more.")
    if data_length == answer - 1:
        return wrong(
            f"{data_length} is one short: a string field is its tag byte (0a), then its length "
            "(05), then the letters. Both bytes come before the name, behind the 5-byte prefix."
        )
    if data_length == _PREFIX:
        return wrong(
            "5 bytes is the prefix alone (or the name alone); the frame carries the prefix "
            "and the whole message behind it."
        )
    return wrong(
        f"{data_length} bytes is not it. The payload is gRPC's 5-byte prefix (flag and "
        "length) followed by the serialized HelloRequest: a tag byte, a length byte, then the "
        "UTF-8 of the name."
    )
