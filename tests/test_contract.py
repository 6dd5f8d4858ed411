"""proto/api.proto is wire-identical to Kubernetes' CRI runtime.v1 at cri-api v0.36.3."""

from __future__ import annotations

import json

import pytest
from google.protobuf import descriptor_pb2

from crilab.stubs import api_pb2, helloworld_pb2

from .conftest import DATA, ROOT

REFERENCE = json.loads((DATA / "cri-runtime-v1-v0.36.3.facts.json").read_text())


def facts(file_descriptor) -> dict:
    """The same facts as ../shared/tools/proto_facts.py, from the generated module."""
    fdp = descriptor_pb2.FileDescriptorProto()
    file_descriptor.CopyToProto(fdp)
    res: dict = {"package": fdp.package, "services": {}, "messages": {}, "enums": {}}
    for s in fdp.service:
        res["services"][s.name] = {
            m.name: [m.input_type, m.output_type, m.client_streaming, m.server_streaming]
            for m in s.method
        }

    def walk(m, prefix: str) -> None:
        name = prefix + m.name
        res["messages"][name] = {f.name: [f.number, f.type, f.label, f.type_name] for f in m.field}
        for n in m.nested_type:
            walk(n, name + ".")
        for e in m.enum_type:
            res["enums"][name + "." + e.name] = {v.name: v.number for v in e.value}

    for m in fdp.message_type:
        walk(m, "")
    for e in fdp.enum_type:
        res["enums"][e.name] = {v.name: v.number for v in e.value}
    return res


MINE = facts(api_pb2.DESCRIPTOR)


def test_package() -> None:
    assert MINE["package"] == REFERENCE["package"] == "runtime.v1"


def test_both_services_with_all_41_rpcs() -> None:
    assert set(MINE["services"]) == {"RuntimeService", "ImageService"}
    assert sum(len(m) for m in MINE["services"].values()) == 41


@pytest.mark.parametrize("kind", ["services", "messages", "enums"])
def test_every_reference_item_present_and_identical(kind: str) -> None:
    missing = sorted(set(REFERENCE[kind]) - set(MINE[kind]))
    assert not missing, f"{kind} missing from proto/api.proto: {missing}"
    differing = {
        name: {"ours": MINE[kind][name], "reference": ref}
        for name, ref in REFERENCE[kind].items()
        if MINE[kind][name] != ref
    }
    assert not differing, f"{kind} differ from cri-api v0.36.3: {differing}"
    extra = sorted(set(MINE[kind]) - set(REFERENCE[kind]))
    assert not extra, f"{kind} in api.proto that runtime.v1 does not have: {extra}"


def test_api_proto_is_commented_for_learners() -> None:
    text = (ROOT / "proto" / "api.proto").read_text()
    comments = [line for line in text.splitlines() if line.strip().startswith("//")]
    assert len(comments) > 150, "api.proto should explain the RPCs and states to a learner"
    assert "kubelet" in text and "crictl" in text


def test_helloworld_contract() -> None:
    hw = facts(helloworld_pb2.DESCRIPTOR)
    assert hw["package"] == "helloworld"
    assert hw["services"]["Greeter"] == {
        "SayHello": [".helloworld.HelloRequest", ".helloworld.HelloReply", False, False],
        "SayHelloStreamReply": [".helloworld.HelloRequest", ".helloworld.HelloReply", False, True],
        "SayHelloBidiStream": [".helloworld.HelloRequest", ".helloworld.HelloReply", True, True],
    }
    assert hw["messages"] == {
        "HelloRequest": {"name": [1, 9, 1, ""]},
        "HelloReply": {"message": [1, 9, 1, ""]},
    }
