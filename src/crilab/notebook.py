"""One line at the top of a notebook: which runtime, which image, which pod settings.

    lab = crilab.notebook.lab()      # the fake runtime, or a real one if configured
    lab.client.version()

By default a ``FakeRuntime`` is started (once per kernel: re-running the cell reuses it, and
says so). When ``CONTAINER_RUNTIME_ENDPOINT`` is set (crictl's own variable), the notebook talks
to that runtime instead, e.g. containerd, with the image named by ``CRILAB_IMAGE``; pods then use
the host network, since a bare containerd may have no CNI network. Change the variable and call
``lab()`` again to switch. Cells that need fake-only features (recording, injection) ask
``lab.fake_only("...")`` and are skipped with a word.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from .builders import NOTEBOOK_LABELS, container_config, pod_config
from .client import ENDPOINT_ENV, Client, connect
from .endpoints import crictl_command

DEFAULT_IMAGE = "busybox"

_current: Lab | None = None


@dataclass
class Lab:
    """What a notebook needs: a client, the fake runtime (or None), an image, pod settings."""

    client: Client
    runtime: Any | None  # a FakeRuntime, or None for a real runtime
    image: str
    host_network: bool
    #: The $CONTAINER_RUNTIME_ENDPOINT this Lab was made for ("" for the fake runtime).
    configured: str = ""

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

    def crictl_command(self) -> str:
        """A crictl command line pointed at this notebook's runtime, fake or real."""
        if self.runtime is not None:
            return self.runtime.crictl_command()
        return crictl_command(self.endpoint, "this runtime listens on TCP")

    def pod_config(self, name: str, **kw: Any):
        """``builders.pod_config`` with this runtime's network, labelled as the notebook's."""
        kw.setdefault("host_network", self.host_network)
        kw["labels"] = {**(kw.get("labels") or {}), **NOTEBOOK_LABELS}
        return pod_config(name, **kw)

    def container_config(self, name: str, command: Iterable[str] = (), **kw: Any):
        return container_config(name, kw.pop("image", self.image), list(command), **kw)

    def cleanup(self) -> None:
        """Remove the pods this notebook made, and so their containers: a clean slate.

        Only pods labelled ``crilab.io/owner=notebook`` (what ``lab.pod_config`` and the
        lifecycle panel make) are removed: on a real node, everybody else's pods (the
        kube-system ones...) are left alone, and counted.
        """
        for pod in self.client.list_pod_sandbox(labels=NOTEBOOK_LABELS):
            try:
                self.client.stop_pod_sandbox(pod.id)
                self.client.remove_pod_sandbox(pod.id)
            except grpc.RpcError as err:  # removed meanwhile (by the panel, say): done
                if err.code() != grpc.StatusCode.NOT_FOUND:
                    raise
        others = len(self.client.list_pod_sandbox())
        if others:
            print(
                f"(lab.cleanup() left {others} pod(s) alone: they were not made through "
                "lab.pod_config or the lifecycle panel)"
            )

    def _describe(self) -> str:
        if self.fake:
            return f"crilab's fake runtime at {self.endpoint}"
        return f"the runtime at {self.endpoint} ({ENDPOINT_ENV}), image {self.image}"

    def __repr__(self) -> str:
        kind = "crilab's fake runtime" if self.fake else "a real runtime"
        return f"<Lab: {kind} at {self.endpoint}, image {self.image}>"


def lab(images: Iterable[str] = (DEFAULT_IMAGE,), *, fresh: bool = False) -> Lab:
    """The kernel's runtime: made on the first call, reused on re-runs (``fresh`` replaces it).

    Each call says which runtime it gives. A changed ``$CONTAINER_RUNTIME_ENDPOINT`` (set,
    changed or unset since the last call) switches to what it now names.
    """
    global _current
    real = os.environ.get(ENDPOINT_ENV, "")
    if _current is not None and not fresh and _alive(_current):
        if _current.configured == real:
            print(f"Reusing {_current._describe()} (lab(fresh=True) starts afresh).")
            return _current
        print(
            f"{ENDPOINT_ENV} changed ({_current.configured or 'unset'} -> {real or 'unset'}): "
            "switching runtime."
        )
    if _current is not None:
        old, _current = _current, None  # a failed connect below must not leave a closed Lab
        _close(old)
    if real:
        image = os.environ.get("CRILAB_IMAGE", DEFAULT_IMAGE)
        _current = Lab(connect(real), None, image, host_network=True, configured=real)
        print(f"Using {_current._describe()}.")
    else:
        from .runtime.server import FakeRuntime

        images = list(images)
        rt = FakeRuntime(images=images)
        try:
            client = connect(rt.endpoint)
        except BaseException:
            rt.stop()
            raise
        _current = Lab(client, rt, images[0] if images else DEFAULT_IMAGE, False)
        print(
            f"Using {_current._describe()}.\n"
            f"(Set {ENDPOINT_ENV} to use a real one, e.g. containerd.)"
        )
    return _current


def _alive(current: Lab) -> bool:
    return current.runtime is None or current.runtime.running


def _close(current: Lab) -> None:
    with contextlib.suppress(Exception):
        current.client.close()
    if current.runtime is not None:
        current.runtime.stop()
