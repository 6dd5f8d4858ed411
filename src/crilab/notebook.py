"""One line at the top of a notebook: which runtime, which image, which pod settings.

    lab = crilab.notebook.lab()      # the fake runtime, or a real one if configured
    lab.client.version()

By default a ``FakeRuntime`` is started (once per kernel: re-running the cell reuses it).
When ``CONTAINER_RUNTIME_ENDPOINT`` is set (crictl's own variable), the notebook talks to that
runtime instead, e.g. containerd, with the image named by ``CRILAB_IMAGE``; pods then use the
host network, since a bare containerd may have no CNI network. Cells that need fake-only
features (recording, injection) ask ``lab.fake_only("...")`` and are skipped with a word.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .builders import container_config, pod_config
from .client import Client, connect

DEFAULT_IMAGE = "busybox"

_current: Lab | None = None


@dataclass
class Lab:
    """What a notebook needs: a client, the fake runtime (or None), an image, pod settings."""

    client: Client
    runtime: Any | None  # a FakeRuntime, or None for a real runtime
    image: str
    host_network: bool

    @property
    def fake(self) -> bool:
        return self.runtime is not None

    @property
    def endpoint(self) -> str:
        return self.client.endpoint

    def fake_only(self, what: str) -> bool:
        """True on the fake runtime; otherwise say why the cell does nothing, and False."""
        if self.fake:
            return True
        print(
            f"(skipped: {what} needs crilab's fake runtime; this notebook talks to {self.endpoint})"
        )
        return False

    def pod_config(self, name: str, **kw: Any):
        kw.setdefault("host_network", self.host_network)
        return pod_config(name, **kw)

    def container_config(self, name: str, command: Iterable[str] = (), **kw: Any):
        return container_config(name, kw.pop("image", self.image), list(command), **kw)

    def cleanup(self) -> None:
        """Remove every pod (and so every container): a clean slate, on any runtime."""
        for pod in self.client.list_pod_sandbox():
            self.client.stop_pod_sandbox(pod.id)
            self.client.remove_pod_sandbox(pod.id)

    def __repr__(self) -> str:
        kind = "crilab's fake runtime" if self.fake else "a real runtime"
        return f"<Lab: {kind} at {self.endpoint}, image {self.image}>"


def lab(images: Iterable[str] = (DEFAULT_IMAGE,), *, fresh: bool = False) -> Lab:
    """The kernel's runtime: made on the first call, reused on re-runs (``fresh`` replaces it)."""
    global _current
    if _current is not None and not fresh and _alive(_current):
        return _current
    if _current is not None:
        _close(_current)
    real = os.environ.get("CONTAINER_RUNTIME_ENDPOINT")
    if real:
        image = os.environ.get("CRILAB_IMAGE", DEFAULT_IMAGE)
        _current = Lab(connect(real), None, image, host_network=True)
        print(f"Using the runtime at {real} (CONTAINER_RUNTIME_ENDPOINT), image {image}.")
    else:
        from .runtime.server import FakeRuntime

        images = list(images)
        rt = FakeRuntime(images=images)
        _current = Lab(connect(rt.endpoint), rt, images[0] if images else DEFAULT_IMAGE, False)
        print(
            f"Using crilab's fake runtime at {rt.endpoint}.\n"
            "(Set CONTAINER_RUNTIME_ENDPOINT to use a real one, e.g. containerd.)"
        )
    return _current


def _alive(current: Lab) -> bool:
    return current.runtime is None or current.runtime.running


def _close(current: Lab) -> None:
    current.client.close()
    if current.runtime is not None:
        current.runtime.stop()
