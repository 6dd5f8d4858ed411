"""Exercises of notebook 03 (a tour of the CRI): the services' methods and the handshake."""

from __future__ import annotations

from ..stubs import api_pb2
from . import Verdict, exercise, right, wrong


def _methods(service: str) -> list[str]:
    return [m.name for m in api_pb2.DESCRIPTOR.services_by_name[service].methods]


def _service_of(method: str) -> str | None:
    for service in api_pb2.DESCRIPTOR.services_by_name.values():
        if method in (m.name for m in service.methods):
            return service.name
    return None


def _is_descriptor(value: object) -> bool:
    return type(value).__name__ in ("MethodDescriptor", "ServiceDescriptor")


# --- 03.count: how many RPCs RuntimeService has --------------------------------------------


@exercise(
    "03.count",
    title="How many RPCs RuntimeService has",
    hint=(
        'api_pb2.DESCRIPTOR.services_by_name["RuntimeService"] is the service\'s descriptor; '
        "its .methods is a sequence, and len() counts it."
    ),
    solution="""
        runtime_rpcs = len(api_pb2.DESCRIPTOR.services_by_name["RuntimeService"].methods)
    """,
)
def _count(runtime_rpcs: object) -> Verdict:
    runtime, image = len(_methods("RuntimeService")), len(_methods("ImageService"))
    if _is_descriptor(runtime_rpcs):
        return wrong(
            f"That is a {type(runtime_rpcs).__name__}, the description of the service itself. "
            "Its .methods holds one entry per rpc: count them with len()."
        )
    if isinstance(runtime_rpcs, str):
        return wrong(f"{runtime_rpcs!r} is text. Give the number itself, an int (len() gives one).")
    if isinstance(runtime_rpcs, bool) or not isinstance(runtime_rpcs, int):
        if hasattr(runtime_rpcs, "__len__"):
            return wrong(
                f"That is a {type(runtime_rpcs).__name__} of {len(runtime_rpcs)} items, not a "
                "number: len() of it is the count."
            )
        return wrong(f"{runtime_rpcs!r} is a {type(runtime_rpcs).__name__}; the answer is an int.")
    if runtime_rpcs == runtime:
        return right(
            f"{runtime} methods, plus {image} in ImageService: {runtime + image} in all. A "
            "runtime need not implement every one: containerd 1.6 was built from an older "
            "api.proto and answers UNIMPLEMENTED to the newer calls (StreamContainers, "
            "GetContainerEvents...), so a kubelet relies only on those its version needs. The "
            "busiest are the humble List calls: the kubelet relists pods and containers every "
            "second to notice changes."
        )
    if runtime_rpcs == runtime + image:
        return wrong(
            f"{runtime_rpcs} is the number of methods in both services: it includes "
            f"ImageService's {image}. Count RuntimeService's alone."
        )
    if runtime_rpcs == image:
        return wrong(
            f"{runtime_rpcs} is ImageService's count (pull, list, remove images...). The "
            "question is about RuntimeService, the pods-and-containers half."
        )
    return wrong(
        f"RuntimeService does not have {runtime_rpcs} methods. Counting rows by hand is easy "
        "to get wrong: let the descriptor count for you."
    )


# --- 03.server-streams: which RuntimeService methods stream their replies -------------------


@exercise(
    "03.server-streams",
    title="RuntimeService's server-streaming methods",
    hint=(
        "Loop over the service descriptor's .methods and keep m.name when m.server_streaming "
        "is True: [m.name for m in ... if m.server_streaming]."
    ),
    solution="""
        runtime_service = api_pb2.DESCRIPTOR.services_by_name["RuntimeService"]
        server_streams = [m.name for m in runtime_service.methods if m.server_streaming]
    """,
)
def _server_streams(server_streams: object) -> Verdict:
    runtime = api_pb2.DESCRIPTOR.services_by_name["RuntimeService"]
    expected = {m.name for m in runtime.methods if m.server_streaming}
    if isinstance(server_streams, str):
        return wrong(
            f"{server_streams!r} is one name (a str); the answer is a list of every "
            "server-streaming method's name."
        )
    if not isinstance(server_streams, list | tuple | set | frozenset):
        return wrong(
            f"That is a {type(server_streams).__name__}; the answer is a list of str (method "
            "names). A generator or filter object can be read only once: wrap it in list()."
        )
    items = list(server_streams)
    if any(_is_descriptor(item) for item in items):
        return wrong(
            "That list holds MethodDescriptor objects: right idea, but the exercise wants their "
            "names, m.name."
        )
    if not all(isinstance(item, str) for item in items):
        kinds = sorted({type(item).__name__ for item in items})
        return wrong(f"The list holds {', '.join(kinds)}; it should hold str (method names).")
    if not items:
        return wrong(
            "The list is empty. Look at the 'kind' column of the table: some rows say "
            "'server streaming'. The flag on each method descriptor is m.server_streaming."
        )
    names = set(items)
    unknown = sorted(n for n in names if _service_of(n) is None)
    if unknown:
        return wrong(
            f"{', '.join(unknown)}: not a method of runtime.v1 (spelling and capitals count: "
            "names are as in the .proto, e.g. 'StreamContainers')."
        )
    other_service = sorted(n for n in names if _service_of(n) != "RuntimeService")
    if other_service:
        return wrong(
            f"{', '.join(other_service)} belongs to ImageService; the exercise asks about "
            "RuntimeService's methods only."
        )
    unary = sorted(names - expected)
    if unary:
        return wrong(
            f"{', '.join(unary)}: unary, one request and one reply. A name such as "
            "'ListContainers' or 'ContainerStats' sounds like many things, but they all come "
            "back in one message; only the server_streaming flag tells."
        )
    missing = sorted(expected - names)
    if missing:
        return wrong(
            f"{len(names)} of the {len(expected)}; one or more are missing (not every "
            "streaming method's name starts with 'Stream'). Let the descriptor's "
            "server_streaming flag decide, not the names."
        )
    if len(items) != len(names):
        return wrong("Some names appear twice: each method once, please.")
    return right(
        f"All {len(expected)}, in any order. None of the CRI's methods is client-streaming or "
        "bidirectional: the kubelet always sends one request. The Stream* calls send a long "
        "list in chunks, to stay under the 16 MiB message limit; GetContainerEvents never "
        "ends: the kubelet keeps it open and reads container events as they happen, instead "
        "of relisting every second."
    )


# --- 03.first-call: the kubelet's first CRI call ----------------------------------------------

_NOT_FIRST = {
    "Status": (
        "the kubelet calls Status right after, and then every few seconds: RuntimeReady and "
        "NetworkReady decide whether the node is Ready. But before asking about health it "
        "must know that it speaks the runtime's API at all."
    ),
    "RunPodSandbox": (
        "RunPodSandbox happens only when a pod is scheduled to the node, long after the "
        "kubelet has started."
    ),
    "ListPodSandbox": (
        "listing pods is the kubelet's relist, once it runs; before that it checks which "
        "API the runtime speaks."
    ),
    "ListContainers": (
        "listing containers is the kubelet's relist, once it runs; before that it checks "
        "which API the runtime speaks."
    ),
    "GetContainerEvents": (
        "the event stream is opened once the kubelet runs (and only with the Evented PLEG "
        "feature); first it checks which API the runtime speaks."
    ),
    "ImageFsInfo": (
        "ImageFsInfo feeds disk-pressure eviction and image garbage collection, which start later."
    ),
}


@exercise(
    "03.first-call",
    title="The kubelet's first CRI call",
    hint=(
        "It is the call crilab.connect makes before anything else: section 3 names it, and on "
        "the fake, lab.runtime.calls[0] shows it. Give the method's name as a str."
    ),
    solution="""
        first_call = "Version"
    """,
)
def _first_call(first_call: object) -> Verdict:
    method = getattr(first_call, "method", first_call)  # a recorded Call: its method
    if not isinstance(method, str):
        kind = type(method).__name__
        return wrong(f"That is of type {kind}; the answer is a method name, a str.")
    name = method.strip().rsplit("/", 1)[-1].rsplit(".", 1)[-1]
    match = next(
        (
            m
            for m in (*_methods("RuntimeService"), *_methods("ImageService"))
            if m.lower() == name.lower()
        ),
        None,
    )
    if match is None:
        return wrong(
            f"{method!r} is not a method of runtime.v1: the table of section 1 lists them all."
        )
    if match == "Version":
        return right(
            "Version. The kubelet's CRI client checks the connection with an empty "
            "VersionRequest: a runtime without runtime.v1.RuntimeService answers "
            "UNIMPLEMENTED, and the kubelet refuses to start (since Kubernetes 1.26 it speaks "
            "runtime.v1 only). Its runtime manager then asks Version with version '0.1.0' and "
            "checks the reply's version; the runtime's name and version end up on the Node, "
            "in the CONTAINER-RUNTIME column of kubectl get nodes -o wide. (crictl version "
            "and crilab.connect send 'v1'; crilab.connect also checks runtime_api_version.)"
        )
    why = _NOT_FIRST.get(
        match,
        f"{match} is a CRI call, but the kubelet makes it only once it runs pods, images or "
        "stats; before any of that it checks which API the runtime speaks.",
    )
    return wrong(f"Not {match}: {why}")
