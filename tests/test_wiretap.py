"""The wiretap: real clients, a real proxy, real servers; what crosses the wire is checked."""

from __future__ import annotations

import gzip
import json
import queue
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import grpc
import hpack
import matplotlib
import pytest
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame, SettingsFrame
from matplotlib.text import Annotation

import crilab
from crilab import builders, helloworld
from crilab.endpoints import EndpointError, parse
from crilab.stubs import api_pb2, api_pb2_grpc, helloworld_pb2, helloworld_pb2_grpc
from crilab.wiretap import (
    CLIENT_TO_SERVER,
    PREFACE,
    SERVER_TO_CLIENT,
    Tap,
    decode,
    proxy,
    sequence_diagram,
    wiretap,
)
from crilab.wiretap.decode import Capture

from .conftest import find_crictl, require

matplotlib.use("Agg")

pytestmark = pytest.mark.timeout(120)

IMAGE = "localhost/crilab/busybox:local"
OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.enable_http_proxy", 0),
]
VERSION_PATH = "/runtime.v1.RuntimeService/Version"


@pytest.fixture(scope="module")
def rt() -> Iterator[crilab.FakeRuntime]:
    with crilab.FakeRuntime(images=[IMAGE]) as runtime:
        yield runtime


@pytest.fixture
def tap(rt) -> Iterator[Tap]:
    with wiretap(rt.endpoint) as t:
        yield t


def channel(endpoint: str) -> grpc.Channel:
    return grpc.insecure_channel(parse(endpoint).grpc_target, options=OPTIONS)


@pytest.fixture
def stubs(rt, tap) -> Iterator[tuple[api_pb2_grpc.RuntimeServiceStub, ...]]:
    """(direct runtime, direct images, tapped runtime, tapped images)."""
    with channel(rt.endpoint) as direct, channel(tap.endpoint) as tapped:
        yield (
            api_pb2_grpc.RuntimeServiceStub(direct),
            api_pb2_grpc.ImageServiceStub(direct),
            api_pb2_grpc.RuntimeServiceStub(tapped),
            api_pb2_grpc.ImageServiceStub(tapped),
        )


def frames_of(tap: Tap, stream: int, direction: str, kind: str, connection: int | None = None):
    return [
        f
        for f in tap.frames
        if f.stream == stream
        and f.direction == direction
        and f.type == kind
        and (connection is None or f.connection == connection)
    ]


def the_call(tap: Tap, path: str):
    found = [c for c in tap.calls if c.path == path]
    assert found, f"the tap saw no call to {path}: {[c.path for c in tap.calls]}"
    return found[-1]


# -- forwarding is transparent ------------------------------------------------------


def test_unary_answers_are_byte_identical(stubs) -> None:
    runtime, images, t_runtime, t_images = stubs
    request = api_pb2.VersionRequest(version="v1")
    assert (
        t_runtime.Version(request, timeout=5).SerializeToString()
        == runtime.Version(request, timeout=5).SerializeToString()
    )
    listing = api_pb2.ListImagesRequest()
    tapped = t_images.ListImages(listing, timeout=5)
    assert tapped.SerializeToString() == images.ListImages(listing, timeout=5).SerializeToString()
    assert IMAGE in [tag for image in tapped.images for tag in image.repo_tags]


def test_server_streaming_through_the_tap(rt, tap, stubs) -> None:
    _, images, _, t_images = stubs
    request = api_pb2.StreamImagesRequest()
    direct = [m.SerializeToString() for m in images.StreamImages(request, timeout=5)]
    tapped = [m.SerializeToString() for m in t_images.StreamImages(request, timeout=5)]
    assert tapped == direct and direct
    call = the_call(tap, "/runtime.v1.ImageService/StreamImages")
    assert call.code == "OK"
    assert [m["length"] for m in call.response_messages] == [len(b) for b in tapped]
    assert all(
        m["message_type"] == "runtime.v1.StreamImagesResponse" for m in call.response_messages
    )


def test_helloworld_streams_show_each_message_as_it_flows() -> None:
    with helloworld.serve() as server, wiretap(server.endpoint.uri) as tap:
        direct = helloworld.say_hello_stream(server.endpoint.uri, "Bo")
        assert helloworld.say_hello_stream(tap.endpoint, "Bo") == direct
        call = the_call(tap, "/helloworld.Greeter/SayHelloStreamReply")
        assert [m["fields"]["name"] for m in call.request_messages] == ["Bo"]
        assert [m["fields"]["message"] for m in call.response_messages] == direct
        assert call.code == "OK"

        # Bidi in lock step: the next request is sent only after the previous reply came.
        names = ["a", "b", "c", "d"]
        todo: queue.Queue[str | None] = queue.Queue()
        todo.put(names[0])

        def requests() -> Iterator[helloworld_pb2.HelloRequest]:
            while (name := todo.get(timeout=5)) is not None:
                yield helloworld_pb2.HelloRequest(name=name)

        replies = {}
        for target in (server.endpoint.uri, tap.endpoint):
            with channel(target) as ch:
                got = []
                for reply in helloworld_pb2_grpc.GreeterStub(ch).SayHelloBidiStream(
                    requests(), timeout=10
                ):
                    got.append(reply.SerializeToString())
                    todo.put(names[len(got)] if len(got) < len(names) else None)
                replies[target] = got
                todo.put(names[0])
        assert replies[tap.endpoint] == replies[server.endpoint.uri]

        bidi = the_call(tap, "/helloworld.Greeter/SayHelloBidiStream")
        assert [m["fields"]["name"] for m in bidi.request_messages] == names
        assert [m["fields"]["message"] for m in bidi.response_messages] == [
            f"Hello, {n}!" for n in names
        ]
        flow = [
            f.direction
            for f in tap.frames
            if f.connection == bidi.connection
            and f.stream == bidi.stream
            and f.type == "DATA"
            and f.detail.get("messages")
        ]
        assert flow == [CLIENT_TO_SERVER, SERVER_TO_CLIENT] * len(names)


def test_an_event_stream_shows_each_event_while_the_call_is_open(rt, tap) -> None:
    client = crilab.connect(tap.endpoint)
    pod = rt.state.run_pod_sandbox(builders.pod_config("events", uid="u-events"))
    with client, client.container_events() as events:
        deadline = time.monotonic() + 5  # the server subscribes once the call reaches it
        while rt.state.events.subscribers == 0:
            assert time.monotonic() < deadline, "GetContainerEvents never subscribed"
            time.sleep(0.005)
        cid = rt.state.create_container(pod, builders.container_config("watched", IMAGE))
        first = next(events)
        assert first.container_id == cid
        call = the_call(tap, "/runtime.v1.RuntimeService/GetContainerEvents")
        assert call.code == "" and call.duration is None  # still streaming
        (seen,) = call.response_messages
        assert seen["message_type"] == "runtime.v1.ContainerEventResponse"
        assert seen["fields"]["container_id"] == cid
        assert seen["length"] == len(first.SerializeToString())
        # CONTAINER_CREATED_EVENT is enum value 0: proto3 leaves zero values off the wire
        assert "container_event_type" not in seen["fields"]
        rt.state.start_container(cid)
        second = next(events)
        assert second.container_event_type == api_pb2.CONTAINER_STARTED_EVENT
        call = the_call(tap, "/runtime.v1.RuntimeService/GetContainerEvents")
        kinds = [m["fields"].get("container_event_type") for m in call.response_messages]
        assert kinds[:2] == [None, "CONTAINER_STARTED_EVENT"]  # (a STOPPED may follow: sh exits)
    deadline = time.monotonic() + 5  # the RST_STREAM leaves the client asynchronously
    while not (call := the_call(tap, "/runtime.v1.RuntimeService/GetContainerEvents")).code:
        assert time.monotonic() < deadline, "no RST_STREAM seen after the client cancelled"
        time.sleep(0.01)
    assert call.code == "CANCELLED" and call.reset == "CANCEL"  # the client hung up: RST_STREAM
    rt.state.remove_pod_sandbox(pod)


# -- what the capture holds -----------------------------------------------------------


def test_a_unary_call_frame_by_frame(tap, stubs) -> None:
    t_runtime = stubs[2]
    request = api_pb2.VersionRequest(version="v1")
    reply = t_runtime.Version(request, timeout=5)
    frames = tap.frames
    kinds = [f.type for f in frames]
    assert kinds.count("PREFACE") == 1  # one connection, one preface
    preface = next(f for f in frames if f.type == "PREFACE")
    assert preface.direction == CLIENT_TO_SERVER and preface.length == len(PREFACE)
    assert preface.detail["preface"] == PREFACE.decode()
    settings = [f for f in frames if f.type == "SETTINGS" and not f.detail["ack"]]
    assert {f.direction for f in settings} == {CLIENT_TO_SERVER, SERVER_TO_CLIENT}
    assert all("INITIAL_WINDOW_SIZE" in f.detail["settings"] for f in settings)
    assert any(f.type == "SETTINGS" and "ACK" in f.flags for f in frames)

    call = the_call(tap, VERSION_PATH)
    (headers,) = frames_of(tap, call.stream, CLIENT_TO_SERVER, "HEADERS", call.connection)
    sent = dict(map(tuple, headers.detail["headers"]))
    assert headers.detail["kind"] == "request headers"
    assert sent[":method"] == "POST" and sent[":path"] == VERSION_PATH
    assert sent["content-type"] == "application/grpc"
    assert sent["te"] == "trailers"
    assert sent["grpc-timeout"][-1] in "HMSmun"  # the 5 s deadline, in gRPC's units

    (asked,) = frames_of(tap, call.stream, CLIENT_TO_SERVER, "DATA", call.connection)
    (message,) = asked.detail["messages"]
    assert message["compressed"] is False
    assert message["length"] == len(request.SerializeToString())
    assert asked.length == 5 + message["length"]
    assert message["prefix"] == "00 " + len(request.SerializeToString()).to_bytes(4).hex(" ")
    assert message["fields"] == {"version": "v1"}

    answered = frames_of(tap, call.stream, SERVER_TO_CLIENT, "DATA", call.connection)
    (message,) = [m for f in answered for m in f.detail["messages"]]
    assert message["compressed"] is False
    assert message["length"] == len(reply.SerializeToString())
    assert message["message_type"] == "runtime.v1.VersionResponse"
    assert message["fields"]["runtime_api_version"] == "v1"
    assert message["fields"]["runtime_name"] == "crilab-fake"

    blocks = frames_of(tap, call.stream, SERVER_TO_CLIENT, "HEADERS", call.connection)
    assert blocks[0].detail["kind"] == "response headers"
    assert ["grpc-status", "0"] in blocks[-1].detail["headers"]
    assert blocks[-1].detail["kind"] == "trailers" and "END_STREAM" in blocks[-1].flags

    assert (call.method, call.service, call.status, call.code) == (
        "Version",
        "runtime.v1.RuntimeService",
        0,
        "OK",
    )
    assert call.request_messages[0]["fields"] == {"version": "v1"}
    assert call.duration is not None and call.duration >= 0


def test_decoding_happens_off_the_hot_path_when_traffic_pauses(tap, stubs) -> None:
    stubs[2].Version(api_pb2.VersionRequest(version="v1"), timeout=5)
    deadline = time.monotonic() + 5
    while not any(f.type == "DATA" for f in tap.capture.frames):  # no sync(): the tap's own
        assert time.monotonic() < deadline, "the background decoder never ran"
        time.sleep(0.01)


def test_no_deadline_no_grpc_timeout(tap, stubs) -> None:
    stubs[2].Version(api_pb2.VersionRequest(version="v1"))
    call = the_call(tap, VERSION_PATH)
    assert "grpc-timeout" not in dict(call.request_headers)


def test_a_failed_call_carries_its_status_in_the_trailers(tap, stubs) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stubs[2].ContainerStatus(api_pb2.ContainerStatusRequest(container_id="nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    call = the_call(tap, "/runtime.v1.RuntimeService/ContainerStatus")
    assert call.status == 5 and call.code == "NOT_FOUND"
    assert "not found" in call.message
    assert call.message == err.value.details()
    assert ("grpc-status", "5") in call.trailers
    assert call.response_messages == []


def test_a_large_message_spans_data_frames_and_is_reassembled() -> None:
    with crilab.FakeRuntime(images=[IMAGE]) as runtime:
        pod = runtime.state.run_pod_sandbox(builders.pod_config("p"))
        for i in range(2000):
            runtime.state.create_container(pod, builders.container_config(f"c{i}", IMAGE))
        with (
            wiretap(runtime.endpoint) as tap,
            channel(runtime.endpoint) as direct,
            channel(tap.endpoint) as tapped,
        ):
            request = api_pb2.ListContainersRequest()
            expected = api_pb2_grpc.RuntimeServiceStub(direct).ListContainers(request, timeout=20)
            got = api_pb2_grpc.RuntimeServiceStub(tapped).ListContainers(request, timeout=20)
            assert got.SerializeToString() == expected.SerializeToString()
            size = len(got.SerializeToString())

            call = the_call(tap, "/runtime.v1.RuntimeService/ListContainers")
            data = frames_of(tap, call.stream, SERVER_TO_CLIENT, "DATA", call.connection)
            assert len(data) > 1, "an ~800 kB message needs several DATA frames"
            assert sum(f.length for f in data) == 5 + size
            assert all(f.detail["incomplete_message"]["length"] == size for f in data[:-1])
            assert [len(f.detail["messages"]) for f in data] == [0] * (len(data) - 1) + [1]
            (message,) = call.response_messages
            assert message["length"] == size
            # past 64 KiB a message is summarised, not decoded: 2000 containers would
            # be megabytes of dicts, far more than a transcript can show
            assert size > decode.DECODE_MESSAGE_BYTES
            assert message["fields"] is None
            assert message["summary"] == {"containers": "(2000 items)"}
            assert str(decode.DECODE_MESSAGE_BYTES) in message["note"]
            page = tap.transcript_html()
            assert "summary:" in page and "(2000 items)" in page


def test_the_capture_is_bounded(rt) -> None:
    with wiretap(rt.endpoint, capacity=50) as tap, channel(tap.endpoint) as ch:
        stub = api_pb2_grpc.RuntimeServiceStub(ch)
        for _ in range(20):
            stub.Version(api_pb2.VersionRequest(version="v1"), timeout=5)
        assert len(tap.frames) == 50
        assert tap.capture.dropped > 0
        assert len(tap.calls) == 20
        assert tap.calls[-1].code == "OK"  # decoding goes on past the bound
        tap.clear()
        assert tap.frames == [] and tap.calls == []
        stub.Version(api_pb2.VersionRequest(version="v1"), timeout=5)  # HPACK state survives
        assert the_call(tap, VERSION_PATH).request_headers


def test_json_round_trip(tap, stubs) -> None:
    stubs[2].Version(api_pb2.VersionRequest(version="v1"), timeout=5)
    document = json.loads(tap.to_json())
    assert document["endpoint"] == tap.endpoint
    assert len(document["frames"]) == len(tap.frames)
    assert document["frames"][0] == json.loads(json.dumps(tap.frames[0].as_dict()))
    (call,) = document["calls"]
    assert call["path"] == VERSION_PATH and call["code"] == "OK"
    assert call["response_messages"][0]["fields"]["runtime_api_version"] == "v1"
    assert json.loads(tap.to_json(indent=2)) == document


def test_transcript_html_shows_the_path_and_escapes_the_wire(tap, stubs) -> None:
    hostile = "<img src=x onerror=alert(1)>"
    stubs[2].Version(
        api_pb2.VersionRequest(version="v1"), timeout=5, metadata=(("x-note", "<b>&</b>"),)
    )
    with pytest.raises(grpc.RpcError):
        stubs[2].ContainerStatus(api_pb2.ContainerStatusRequest(container_id=hostile), timeout=5)
    page = tap.transcript_html()
    assert VERSION_PATH in page
    assert "runtime.v1.VersionResponse" in page and "NOT_FOUND" in page
    assert "<img" not in page and "<b>&" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;b&gt;&amp;&lt;/b&gt;" in page
    assert tap._repr_html_().startswith('<div class="crilab-wiretap">')


def test_an_empty_tap_renders() -> None:
    with helloworld.serve() as server, wiretap(server.endpoint.uri) as tap:
        assert "Nothing captured yet" in tap._repr_html_()
        assert json.loads(tap.to_json())["frames"] == []


# -- the proxy itself ---------------------------------------------------------------------


def test_private_socket_permissions_and_cleanup(rt) -> None:
    tap = wiretap(rt.endpoint)
    path = Path(parse(tap.endpoint).path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert crilab.connect(tap.endpoint).version().runtime_api_version == "v1"
    tap.stop()
    tap.stop()  # twice is fine
    assert not path.exists() and not path.parent.exists()
    assert not tap.running
    assert the_call(tap, VERSION_PATH).code == "OK"  # the capture outlives the tap


def test_listen_on_a_given_unix_path_and_on_tcp(rt, tmp_path) -> None:
    sock = tmp_path / "tap.sock"
    with wiretap(rt.endpoint, listen=f"unix://{sock}") as tap:
        assert tap.endpoint == f"unix://{sock}"
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert crilab.connect(tap.endpoint).version().runtime_name == "crilab-fake"
    assert not sock.exists()
    with wiretap(rt.endpoint, listen="tcp://127.0.0.1:0") as tap:
        assert tap.endpoint.startswith("tcp://127.0.0.1:") and not tap.endpoint.endswith(":0")
        assert crilab.connect(tap.endpoint).version().runtime_api_version == "v1"
        assert the_call(tap, VERSION_PATH).code == "OK"


def test_a_tcp_upstream() -> None:
    with (
        crilab.FakeRuntime(listen="tcp://127.0.0.1:0") as runtime,
        wiretap(runtime.endpoint) as tap,
    ):
        assert tap.endpoint.startswith("unix://")
        assert crilab.connect(tap.endpoint).version().runtime_api_version == "v1"
        assert the_call(tap, VERSION_PATH).code == "OK"


def test_an_unreachable_upstream_is_reported_not_hidden(tmp_path) -> None:
    with wiretap(f"unix://{tmp_path / 'nobody.sock'}") as tap, channel(tap.endpoint) as ch:
        with pytest.raises(grpc.RpcError) as err:
            api_pb2_grpc.RuntimeServiceStub(ch).Version(api_pb2.VersionRequest(), timeout=2)
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        notes = [f for f in tap.frames if f.type == "PROXY"]
        assert notes and "could not reach the upstream" in notes[0].detail["note"]


def test_bytes_that_are_not_http2_are_forwarded_and_shown(rt, tap) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(5)
        raw.connect(parse(tap.endpoint).path)
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        raw.shutdown(socket.SHUT_WR)
        while raw.recv(4096):  # whatever the server answers, until it closes
            pass
    (odd,) = [f for f in tap.frames if f.type == "NOT_HTTP2"]
    assert "not HTTP/2" in odd.detail["error"]
    assert crilab.connect(tap.endpoint).version().runtime_api_version == "v1"


def test_frames_split_anywhere_are_reassembled() -> None:
    """HEADERS + CONTINUATION, two messages in one DATA frame, one message over two,
    all fed one byte at a time, as the worst TCP reads would deliver them."""
    encoder = hpack.Encoder()
    block = encoder.encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/helloworld.Greeter/SayHelloBidiStream"),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("x-long", "y" * 300),
        ]
    )
    first, rest = block[:40], block[40:]
    ann, bo = (helloworld_pb2.HelloRequest(name=n).SerializeToString() for n in ("Ann", "Bo" * 50))

    def framed(message: bytes) -> bytes:
        return b"\x00" + len(message).to_bytes(4, "big") + message

    two = framed(ann) + framed(ann)
    long = framed(bo)
    frames = [
        SettingsFrame(0, settings={SettingsFrame.MAX_FRAME_SIZE: 16384}),
        HeadersFrame(1, data=first),
        ContinuationFrame(1, data=rest, flags=["END_HEADERS"]),
        DataFrame(1, data=two),
        DataFrame(1, data=long[:30]),
        DataFrame(1, data=long[30:], flags=["END_STREAM"]),
    ]
    wire = PREFACE + b"".join(f.serialize() for f in frames)
    capture = Capture()
    for i in range(len(wire)):
        capture.feed(1, CLIENT_TO_SERVER, wire[i : i + 1], float(i))
    got = capture.frames
    assert [f.type for f in got] == [
        "PREFACE",
        "SETTINGS",
        "HEADERS",
        "CONTINUATION",
        "DATA",
        "DATA",
        "DATA",
    ]
    assert got[1].detail["settings"] == {"MAX_FRAME_SIZE": 16384}
    assert got[2].detail["awaiting"] == "CONTINUATION"
    assert ["x-long", "y" * 300] in got[3].detail["headers"]
    assert [m["fields"] for m in got[4].detail["messages"]] == [{"name": "Ann"}] * 2
    assert got[5].detail["messages"] == []
    assert got[5].detail["incomplete_message"] == {"have": 30, "length": len(bo)}  # 5 + 25
    (last,) = got[6].detail["messages"]
    assert last["fields"] == {"name": "Bo" * 50} and last["length"] == len(bo)
    (call,) = capture.calls
    assert call.method == "SayHelloBidiStream" and len(call.request_messages) == 3
    assert call.code == "" and call.duration is None  # no answer yet


def test_crictl_through_the_tap(rt, tap) -> None:
    crictl = find_crictl()
    require(crictl, "crictl not found: set $CRICTL, put ../shared beside the repo, or install it")
    assert crictl is not None
    done = subprocess.run(
        [
            crictl,
            "--runtime-endpoint",
            tap.endpoint,
            "--image-endpoint",
            tap.endpoint,
            "--timeout",
            "10s",
            "version",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "RuntimeName:  crilab-fake" in done.stdout
    assert "RuntimeApiVersion:  v1" in done.stdout
    call = the_call(tap, VERSION_PATH)
    assert call.code == "OK"
    assert call.response_messages[0]["fields"]["runtime_name"] == "crilab-fake"
    assert "grpc-go" in dict(call.request_headers).get("user-agent", "")


# -- sequence diagrams ----------------------------------------------------------------------


def arrows(fig, gid: str) -> list[Annotation]:
    return [t for t in fig.axes[0].texts if isinstance(t, Annotation) and t.get_gid() == gid]


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].texts if not isinstance(t, Annotation)]


def test_sequence_diagram_of_a_fake_runtimes_recording() -> None:
    with crilab.FakeRuntime(images=[IMAGE]) as rt, channel(rt.endpoint) as ch:
        runtime = api_pb2_grpc.RuntimeServiceStub(ch)
        runtime.Version(api_pb2.VersionRequest(version="v1"), timeout=5)
        api_pb2_grpc.ImageServiceStub(ch).ListImages(api_pb2.ListImagesRequest(), timeout=5)
        with pytest.raises(grpc.RpcError):
            runtime.ContainerStatus(api_pb2.ContainerStatusRequest(container_id="x"), timeout=5)
        fig = sequence_diagram(rt, title="three calls")
    assert isinstance(fig, matplotlib.figure.Figure)
    assert len(arrows(fig, "request")) == 3 and len(arrows(fig, "response")) == 3
    labels = texts(fig)
    assert "client" in labels and "runtime" in labels
    assert [t for t in labels if t in ("Version", "ListImages", "ContainerStatus")] == [
        "Version",
        "ListImages",
        "ContainerStatus",
    ]
    assert any(t.startswith("ContainerStatus → NOT_FOUND") for t in labels)
    assert any(t.startswith("Version → OK") for t in labels)
    assert fig.axes[0].get_title() == "three calls"
    for request, response in zip(arrows(fig, "request"), arrows(fig, "response"), strict=True):
        assert request.xy[0] == 1 and request.xyann[0] == 0  # client → runtime
        assert response.xy[0] == 0 and response.xyann[0] == 1  # runtime → client
        assert response.xy[1] > request.xy[1]  # the answer comes later (time runs down)
    fig.canvas.draw()


def test_sequence_diagram_of_a_tap(tap, stubs) -> None:
    stubs[2].Version(api_pb2.VersionRequest(version="v1"), timeout=5)
    stubs[3].ListImages(api_pb2.ListImagesRequest(), timeout=5)
    fig = tap.sequence_diagram()
    assert len(arrows(fig, "request")) == 2 and len(arrows(fig, "response")) == 2
    labels = texts(fig)
    assert "Version" in labels and "ListImages" in labels
    assert any(t.startswith("ListImages → OK") for t in labels)
    fig.canvas.draw()


def test_sequence_diagram_of_tuples() -> None:
    calls = [
        ("Version", "OK", 100.0, 0.001),
        ("StartContainer", "DEADLINE_EXCEEDED", 100.01, 2.0),
        ("/runtime.v1.RuntimeService/StopContainer", "", 103.0, None),  # still in flight
    ]
    fig = sequence_diagram(calls, scale="time")
    requests, responses = arrows(fig, "request"), arrows(fig, "response")
    assert len(requests) == 3 and len(responses) == 2
    labels = texts(fig)
    assert "StopContainer" in labels and "(no answer yet)" in labels
    assert "StartContainer → DEADLINE_EXCEEDED (2000 ms)" in labels
    fast, slow = (r.xy[1] - q.xy[1] for q, r in zip(requests, responses, strict=False))
    assert slow == pytest.approx(2000) and fast == pytest.approx(1)  # real milliseconds
    fig = sequence_diagram(calls[:2])
    fast, slow = (
        r.xy[1] - q.xy[1]
        for q, r in zip(arrows(fig, "request"), arrows(fig, "response"), strict=True)
    )
    assert slow > fast > 0
    assert "2 calls" in fig.axes[0].get_title()
    empty = sequence_diagram([])
    assert "no calls recorded yet" in texts(empty)
    empty.canvas.draw()
    with pytest.raises(TypeError):
        sequence_diagram(42)


def test_crilab_tap_command_forwards_and_reports(tmp_path) -> None:
    import signal
    import subprocess
    import sys

    from crilab import FakeRuntime, connect

    with FakeRuntime() as rt:
        out = tmp_path / "capture.json"
        proc = subprocess.Popen(
            [sys.executable, "-m", "crilab", "tap", rt.endpoint, "--json", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        endpoint = proc.stdout.readline().strip()
        assert endpoint.startswith("unix://")
        with connect(endpoint) as client:
            assert client.version().runtime_api_version == "v1"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "/runtime.v1.RuntimeService/Version OK" in err
        assert "/runtime.v1.RuntimeService/Version" in out.read_text()


# -- the tap's own socket, and where it listens --------------------------------------------


def test_stop_removes_only_the_taps_own_socket(rt, tmp_path) -> None:
    """The tap's socket was removed and another process listens at the path now: stopping
    the tap leaves that socket alone."""
    path = tmp_path / "tap.sock"
    tap = wiretap(rt.endpoint, listen=f"unix://{path}")
    assert crilab.connect(tap.endpoint).version().runtime_api_version == "v1"
    path.unlink()
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    other.listen(1)
    try:
        theirs = (path.stat().st_dev, path.stat().st_ino)
        tap.stop()
        assert (path.stat().st_dev, path.stat().st_ino) == theirs
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(2)
            probe.connect(str(path))
    finally:
        other.close()


def test_a_long_temp_dir_is_named_and_nothing_is_left(rt, monkeypatch, tmp_path) -> None:
    long = tmp_path / ("L" * 100)
    long.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    with pytest.raises(EndpointError) as err:
        wiretap(rt.endpoint)
    assert "TMPDIR" in str(err.value) and "leave listen unset" not in str(err.value)
    assert list(long.iterdir()) == []


def test_listening_on_every_interface_is_warned_about(rt) -> None:
    """As for the runtime: allowed, but warned about, pointing at the caller's line.
    Bound and stopped at once: no traffic ever goes to a non-loopback address."""
    with pytest.warns(UserWarning, match="reachable from the network") as caught:
        tap = wiretap(rt.endpoint, listen="tcp://0.0.0.0:0")
    tap.stop()
    message = str(caught[0].message)
    assert "this wiretap" in message and "no authentication" in message
    assert rt.endpoint in message and "127.0.0.1" in message
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loopback: no warning
        wiretap(rt.endpoint, listen="tcp://127.0.0.1:0").stop()


# -- what the capture keeps stays bounded ----------------------------------------------------


def _event_stream(tap: Tap, rt) -> Iterator[api_pb2.ContainerEventResponse]:
    ch = channel(tap.endpoint)
    events = api_pb2_grpc.RuntimeServiceStub(ch).GetContainerEvents(
        api_pb2.GetEventsRequest(), timeout=60
    )
    deadline = time.monotonic() + 5
    while rt.state.events.subscribers == 0:
        assert time.monotonic() < deadline, "GetContainerEvents never subscribed"
        time.sleep(0.005)
    return ch, events


@pytest.mark.parametrize("capacity", [10_000, 50])
def test_a_long_stream_keeps_its_newest_messages_and_counts_the_rest(rt, capacity) -> None:
    """One GetContainerEvents call with 300 events: it keeps the newest 100 (50 when the
    whole capture holds 50), counts the older ones, and the transcript says so."""
    pod = rt.state.run_pod_sandbox(builders.pod_config("many", uid="u-many"))
    with wiretap(rt.endpoint, capacity=capacity) as tap:
        ch, events = _event_stream(tap, rt)
        ids = []
        for i in range(150):  # created + deleted: 300 events
            cid = rt.state.create_container(pod, builders.container_config(f"e{i}", IMAGE))
            rt.state.remove_container(cid)
            ids.append(cid)
        got = [next(events) for _ in range(300)]
        assert got[-1].container_id == ids[-1]
        call = the_call(tap, "/runtime.v1.RuntimeService/GetContainerEvents")
        kept = min(decode.MESSAGES_PER_CALL, capacity)
        assert len(call.response_messages) == kept
        assert call.responses_dropped == 300 - kept
        assert call.response_messages[-1]["fields"]["container_id"] == ids[-1]
        assert call.response_messages[-1]["length"] == len(got[-1].SerializeToString())
        # the request: kept, unless the whole capture's bound let it go (it is the oldest)
        assert len(call.request_messages) + call.requests_dropped == 1
        assert f"(+{300 - kept} older, not kept)" in tap.transcript_html()
        events.cancel()
        ch.close()
    rt.state.remove_pod_sandbox(pod)


def test_decoded_fields_stay_within_a_byte_budget(rt) -> None:
    """Each ListContainers answer of 100 containers decodes into ~200 kB of dicts: past the
    budget the oldest answers keep a summary only, the newest their fields."""
    pod = rt.state.run_pod_sandbox(builders.pod_config("budget", uid="u-budget"))
    for i in range(100):
        rt.state.create_container(pod, builders.container_config(f"b{i}", IMAGE))
    with wiretap(rt.endpoint) as tap, channel(tap.endpoint) as ch:
        budget = 200_000
        tap.capture.keep_decoded_bytes = budget
        stub = api_pb2_grpc.RuntimeServiceStub(ch)
        request = api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(pod_sandbox_id=pod))
        size = stub.ListContainers(request, timeout=10).ByteSize()
        assert 20_000 < size < decode.DECODE_MESSAGE_BYTES  # decoded, not summarised
        for _ in range(14):
            stub.ListContainers(request, timeout=10)
        tap.sync()
        assert tap.capture.decoded_bytes <= budget
        answers = [
            c.response_messages[0]
            for c in tap.calls
            if c.method == "ListContainers" and c.response_messages
        ]
        assert len(answers) == 15
        decoded = [m for m in answers if m["fields"] is not None]
        assert 0 < len(decoded) <= budget // size
        assert answers[-1] in decoded  # the newest keep their fields
        for message in answers[: len(answers) - len(decoded)]:
            assert message["fields"] is None
            assert message["summary"] == {"containers": "(100 items)"}
            assert "budget" in message["note"]
        every = [m for c in tap.calls for m in (*c.request_messages, *c.response_messages)]
        assert tap.capture.summarised == sum("budget" in m["note"] for m in every)
        frames = [f for f in tap.frames if f.type == "DATA" and f.detail.get("messages")]
        assert any(m["fields"] is None for f in frames for m in f.detail["messages"])
        assert "older messages summarised" in tap.transcript_html()
        assert json.loads(tap.to_json())["summarised"] == tap.capture.summarised
    for cid in list(rt.state.containers):
        if rt.state.containers[cid].pod_id == pod:
            rt.state.remove_container(cid)
    rt.state.remove_pod_sandbox(pod)


@pytest.fixture
def big_runtime() -> Iterator[crilab.FakeRuntime]:
    """A runtime whose ListContainers answer is ~800 kB (2000 containers)."""
    with crilab.FakeRuntime(images=[IMAGE]) as runtime:
        pod = runtime.state.run_pod_sandbox(builders.pod_config("p"))
        for i in range(2000):
            runtime.state.create_container(pod, builders.container_config(f"c{i}", IMAGE))
        yield runtime


def test_ping_and_window_update_frames_are_shown_for_what_they_are(big_runtime) -> None:
    """An ~800 kB answer moves under HTTP/2 flow control (WINDOW_UPDATE), and grpc probes
    the bandwidth with PINGs, each echoed in an ACK: decoded and rendered as such."""
    with wiretap(big_runtime.endpoint) as tap, channel(tap.endpoint) as tapped:
        reply = api_pb2_grpc.RuntimeServiceStub(tapped).ListContainers(
            api_pb2.ListContainersRequest(), timeout=20
        )
        assert len(reply.containers) == 2000
        pings = [f for f in tap.frames if f.type == "PING"]
        asked = [f for f in pings if not f.detail["ack"]]
        assert asked, [f.type for f in tap.frames]
        for ping in asked:
            assert len(bytes.fromhex(ping.detail["opaque_data"])) == 8
            assert ping.stream == 0 and ping.length == 8
        answered = {(f.direction, f.detail["opaque_data"]) for f in pings if f.detail["ack"]}
        assert any(
            (
                SERVER_TO_CLIENT if p.direction == CLIENT_TO_SERVER else CLIENT_TO_SERVER,
                p.detail["opaque_data"],
            )
            in answered
            for p in asked
        ), "a PING's ACK carries its opaque data back"
        updates = [f for f in tap.frames if f.type == "WINDOW_UPDATE"]
        assert updates and all(f.detail["increment"] > 0 for f in updates)
        assert all(f.length == 4 for f in updates)
        # the client, to receive 800 kB, opens the connection's window (stream 0)
        assert any(f.direction == CLIENT_TO_SERVER and f.stream == 0 for f in updates)
        page = tap.transcript_html(limit=0)
        increment = updates[0].detail["increment"]
        assert f"+{increment} bytes of flow-control window" in page
        assert "<b>PING</b>" in page and f"opaque {asked[0].detail['opaque_data']}" in page
        acked = next(f for f in pings if f.detail["ack"])
        assert f"ACK of opaque {acked.detail['opaque_data']}" in page


def test_a_decoder_that_falls_behind_stops_decoding_not_forwarding(
    big_runtime, monkeypatch
) -> None:
    """The decoder held up (as by a slow machine) while answers stream through: past the
    backlog bound the tap stops decoding that direction, says so, and keeps forwarding
    every byte untouched; a new connection is decoded again."""
    monkeypatch.setattr(proxy, "MAX_BACKLOG_BYTES", 2 * 1024 * 1024)
    with (
        wiretap(big_runtime.endpoint) as tap,
        channel(big_runtime.endpoint) as direct,
        channel(tap.endpoint) as tapped,
    ):
        request = api_pb2.ListContainersRequest()
        expected = api_pb2_grpc.RuntimeServiceStub(direct).ListContainers(request, timeout=20)
        stub = api_pb2_grpc.RuntimeServiceStub(tapped)
        with tap._decode_lock:  # nothing is decoded while this is held
            for _ in range(6):  # ~5 MB: past the 2 MiB bound
                got = stub.ListContainers(request, timeout=20)
                assert got.SerializeToString() == expected.SerializeToString()
                assert tap._backlog_bytes <= proxy.MAX_BACKLOG_BYTES
        assert tap.sync()
        notes = [f for f in tap.frames if f.type == "PROXY"]
        assert [n.direction for n in notes] == [SERVER_TO_CLIENT]
        assert "stopped decoding server→client" in notes[0].detail["note"]
        assert "still forwarded" in notes[0].detail["note"]
        calls = [c for c in tap.calls if c.method == "ListContainers"]
        assert len(calls) == 6  # the requests (the other direction) are still decoded
        assert calls[0].code == "OK"
        unfinished = [c for c in calls if not c.code]
        assert unfinished and all("stopped decoding" in c.note for c in unfinished)
        assert "stopped decoding" in tap.transcript_html()
        # still forwarding on that connection; and a new connection is decoded again
        assert stub.Version(api_pb2.VersionRequest(), timeout=5).runtime_api_version == "v1"
        own = [*OPTIONS, ("grpc.use_local_subchannel_pool", 1)]  # a connection of its own
        with grpc.insecure_channel(parse(tap.endpoint).grpc_target, options=own) as fresh:
            api_pb2_grpc.RuntimeServiceStub(fresh).Version(api_pb2.VersionRequest(), timeout=5)
        (decoded,) = [c for c in tap.calls if c.method == "Version" and c.code]
        assert decoded.code == "OK" and decoded.connection != calls[0].connection
        assert decoded.response_messages[0]["fields"]["runtime_api_version"] == "v1"
    assert tap.sync() and tap._backlog_bytes == 0  # every byte accounted for


def test_sync_honours_its_timeout_while_decoding(rt) -> None:
    """A backlog that takes a while to decode: sync(timeout) returns False once the time is
    up, not when the decoding is done; what is left is decoded later, in order."""
    pod = rt.state.run_pod_sandbox(builders.pod_config("slow", uid="u-slow"))
    for i in range(150):  # a ~60 kB answer: decoded into fields, the slow kind
        rt.state.create_container(pod, builders.container_config(f"s{i}", IMAGE))
    request = api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(pod_sandbox_id=pod))
    with wiretap(rt.endpoint) as tap, channel(tap.endpoint) as ch:
        stub = api_pb2_grpc.RuntimeServiceStub(ch)
        assert stub.ListContainers(request, timeout=10).ByteSize() < decode.DECODE_MESSAGE_BYTES
        with tap._decode_lock:  # the background decoder waits; sync, on this thread, not
            for _ in range(200):
                stub.ListContainers(request, timeout=10)
            assert not tap.sync(timeout=0), "a backlog left, and no time to decode it"
            t0 = time.monotonic()
            while not tap.sync(timeout=0.2):
                assert time.monotonic() - t0 < 120, "no progress"
        calls = [c for c in tap.calls if c.method == "ListContainers"]
        assert len(calls) == 201 and all(c.code == "OK" for c in calls)
        streams = [c.stream for c in calls]
        assert streams == sorted(streams)  # decoded in the order they crossed
    for cid in [c for c, ctr in rt.state.containers.items() if ctr.pod_id == pod]:
        rt.state.remove_container(cid)
    rt.state.remove_pod_sandbox(pod)


def test_compressed_messages_are_inflated_within_the_limit(tap) -> None:
    """A gzip-compressed call is decoded; a message that would inflate past the 16 MiB
    gRPC limit (a zip bomb, a few kB on the wire) is reported, never inflated whole."""
    with grpc.insecure_channel(
        parse(tap.endpoint).grpc_target, options=OPTIONS, compression=grpc.Compression.Gzip
    ) as ch:
        request = api_pb2.VersionRequest(version="v1" * 500)
        api_pb2_grpc.RuntimeServiceStub(ch).Version(request, timeout=5)
    (sent,) = the_call(tap, VERSION_PATH).request_messages
    assert sent["compressed"] is True and sent["length"] < request.ByteSize()
    assert sent["uncompressed_length"] == request.ByteSize()
    assert sent["fields"] == {"version": "v1" * 500}

    encoder = hpack.Encoder()
    block = encoder.encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", VERSION_PATH),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("grpc-encoding", "gzip"),
        ]
    )
    bomb = gzip.compress(b"\0" * (17 * 1024 * 1024))
    assert len(bomb) < 64 * 1024
    body = b"\x01" + len(bomb).to_bytes(4, "big") + bomb
    frames = [HeadersFrame(1, data=block, flags=["END_HEADERS"])]
    frames += [DataFrame(1, data=body[i : i + 16384]) for i in range(0, len(body), 16384)]
    capture = Capture()
    capture.feed(1, CLIENT_TO_SERVER, PREFACE + b"".join(f.serialize() for f in frames), 0.0)
    (call,) = capture.calls
    (message,) = call.request_messages
    assert message["fields"] is None and "inflates to more than" in message["error"]
