"""gRPC on the wire: a transparent proxy that shows the HTTP/2 frames of every call.

    import crilab
    from crilab.wiretap import wiretap, sequence_diagram

    rt = crilab.FakeRuntime(images=["busybox"])
    tap = wiretap(rt.endpoint)             # a private unix socket in front of the runtime
    client = crilab.connect(tap.endpoint)  # calls go through the tap, byte for byte
    client.version()
    tap                                    # the transcript: preface, SETTINGS, HEADERS, DATA...
    tap.calls[-1].response_messages        # the decoded VersionResponse
    sequence_diagram(tap)                  # or sequence_diagram(rt): who called what, when

``proxy`` forwards bytes, ``decode`` turns a copy of them into records (with
hyperframe, hpack and protobuf), ``render`` writes HTML and JSON, ``sequence``
draws the calls.
"""

from __future__ import annotations

from .decode import CLIENT_TO_SERVER, PREFACE, SERVER_TO_CLIENT, CallRecord, FrameRecord
from .proxy import Tap, wiretap
from .sequence import sequence_diagram

__all__ = [
    "CLIENT_TO_SERVER",
    "PREFACE",
    "SERVER_TO_CLIENT",
    "CallRecord",
    "FrameRecord",
    "Tap",
    "sequence_diagram",
    "wiretap",
]
