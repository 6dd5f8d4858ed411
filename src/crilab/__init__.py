"""crilab: learn gRPC through the Kubernetes Container Runtime Interface.

The public face, what notebooks import::

    import crilab
    rt = crilab.FakeRuntime()            # a fake CRI runtime serving on a private socket
    client = crilab.connect(rt.endpoint) # a kubelet-style client
    from crilab.stubs import api_pb2     # the generated CRI messages

Names are loaded on first use so that ``import crilab`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "FakeRuntime": "crilab.runtime.server",
    "connect": "crilab.client",
    "Client": "crilab.client",
    "explain": "crilab.explanations",
    "load_stubs": "crilab.stubs",
    "Lognormal": "crilab.runtime.instrument",
    "Tap": "crilab.wiretap",
    "sequence_diagram": "crilab.wiretap",
    "spawn_runtime": "crilab.spawned",
    "EndpointError": "crilab.endpoints",
}

__all__ = ["__version__", *_LAZY]


def load_stubs(name: str = "api") -> tuple[Any, Any]:
    """Return ``(NAME_pb2, NAME_pb2_grpc)`` for a proto in ``proto/``."""
    from . import stubs

    return stubs.load(f"{name}_pb2"), stubs.load(f"{name}_pb2_grpc")


_SUBMODULES = {"notebook", "widgets", "latency", "builders", "helloworld", "wiretap", "exercises"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:  # ``import crilab`` then ``crilab.notebook.lab()`` just works
        return importlib.import_module(f"crilab.{name}")
    module = _LAZY.get(name)
    if module is None or name == "load_stubs":
        raise AttributeError(f"module 'crilab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
