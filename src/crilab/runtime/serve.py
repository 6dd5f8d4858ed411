"""``crilab serve``: the fake runtime in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence

from ..endpoints import EndpointError
from .errors import CRIError


def run(listen: str | None = None, preload: Sequence[str] = (), quiet: bool = False) -> int:
    from .server import FakeRuntime

    try:
        rt = FakeRuntime(listen, images=preload)
    except (EndpointError, CRIError) as exc:
        print(f"crilab serve: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        done.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    print(rt.endpoint, flush=True)
    if not quiet:
        print(f"crilab fake CRI runtime serving on {rt.endpoint}", file=sys.stderr)
        if rt.endpoint.startswith("unix://"):
            print(f"try:  {rt.crictl_command()} version", file=sys.stderr)
            print(f"  or: export CONTAINER_RUNTIME_ENDPOINT={rt.endpoint}", file=sys.stderr)
        else:
            print(
                "crictl accepts unix sockets only; this TCP endpoint is for crilab.connect()",
                file=sys.stderr,
            )
        print("Ctrl-C stops it and removes the socket.", file=sys.stderr, flush=True)
    while not done.wait(0.5):
        pass
    rt.stop()
    if not quiet:
        print("crilab serve: stopped", file=sys.stderr)
    return 0
