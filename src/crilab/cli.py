"""The ``crilab`` command: ``crilab gen``, ``crilab serve`` and ``crilab tap``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def _cmd_gen(args: argparse.Namespace) -> int:
    from . import stubs

    try:
        names = args.proto or stubs.proto_names()
        if not names:
            raise FileNotFoundError(
                f"no .proto files in {stubs.proto_dir()}: point CRILAB_PROTO_DIR at the folder "
                "that holds api.proto (or unset it to use crilab's own)"
            )
        stubs.remove_stale_temporaries()
        if args.check or not args.out:
            for name in names:
                started = time.perf_counter()
                where = stubs.generate(name)
                took = (time.perf_counter() - started) * 1000
                print(f"{name}.proto -> {where} ({took:.0f} ms)")
            return 0
        for name in names:
            for path in stubs.write_stubs(name, args.out):
                print(path)
    except (stubs.ProtoError, ModuleNotFoundError, FileNotFoundError) as exc:
        print(f"crilab gen: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .runtime.serve import run

    return run(listen=args.listen, preload=args.preload, quiet=args.quiet)


def _cmd_tap(args: argparse.Namespace) -> int:
    import signal
    import threading

    from .endpoints import EndpointError
    from .wiretap import wiretap

    if args.upstream and args.upstream_option and args.upstream != args.upstream_option:
        print(
            f"crilab tap: two upstreams given ({args.upstream} and --upstream "
            f"{args.upstream_option}): give one",
            file=sys.stderr,
        )
        return 2
    upstream = args.upstream or args.upstream_option
    if not upstream:
        print(
            "crilab tap: say which server to tap: crilab tap ENDPOINT "
            "(or --upstream ENDPOINT), e.g. unix:///run/containerd/containerd.sock",
            file=sys.stderr,
        )
        return 2
    try:
        tap = wiretap(upstream, listen=args.listen, capacity=args.capacity)
    except EndpointError as exc:
        print(f"crilab tap: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: done.set())
    print(tap.endpoint, flush=True)
    print(
        f"crilab tap: {tap.endpoint} -> {tap.upstream.uri}; Ctrl-C stops and lists the calls",
        file=sys.stderr,
        flush=True,
    )
    while not done.wait(0.5):
        pass
    tap.stop()
    for call in tap.calls:
        took = "in flight" if call.duration is None else f"{call.duration * 1000:.2f} ms"
        print(f"{call.path} {call.code or '(no status)'} {took}", file=sys.stderr)
    if args.json:
        args.json.write_text(tap.to_json(indent=1))
        print(f"crilab tap: capture written to {args.json}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crilab",
        description="Learn gRPC through the Kubernetes CRI: a fake runtime, stubs, tools.",
    )
    parser.add_argument("--version", action="version", version=f"crilab {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    gen = sub.add_parser(
        "gen",
        help="generate Python stubs from crilab's .proto files",
        description="Write *_pb2.py, *_pb2_grpc.py and *_pb2.pyi for crilab's protos.",
    )
    gen.add_argument("--out", type=Path, help="write plain stubs here (import api_pb2 works)")
    gen.add_argument(
        "--proto",
        nargs="+",
        action="extend",
        metavar="NAME",
        help="only these protos (api, helloworld): --proto api helloworld, or repeat --proto",
    )
    gen.add_argument(
        "--check", action="store_true", help="fill crilab's stub cache and say where it is"
    )
    gen.set_defaults(func=_cmd_gen)

    serve = sub.add_parser(
        "serve",
        help="run the fake CRI runtime in the foreground",
        description="Serve the fake CRI runtime until Ctrl-C or SIGTERM.",
    )
    serve.add_argument(
        "--listen",
        metavar="ENDPOINT",
        help="unix:///path.sock or tcp://127.0.0.1:PORT (default: a private unix socket)",
    )
    serve.add_argument(
        "--preload",
        action="append",
        default=[],
        metavar="IMAGE",
        help="an image present from the start, e.g. busybox; repeat for more",
    )
    serve.add_argument("--quiet", action="store_true", help="print only the endpoint")
    serve.set_defaults(func=_cmd_serve)

    tap = sub.add_parser(
        "tap",
        help="a wiretap proxy in front of a gRPC server: see the HTTP/2 frames of every call",
        description="Forward a private unix socket to ENDPOINT, byte for byte, recording the "
        "HTTP/2 frames; on Ctrl-C or SIGTERM, list the calls (and write the capture as JSON).",
    )
    tap.add_argument(
        "upstream",
        nargs="?",
        metavar="ENDPOINT",
        help="the server: unix:///path.sock or tcp://HOST:PORT",
    )
    tap.add_argument(
        "--upstream",
        dest="upstream_option",
        metavar="ENDPOINT",
        help="the same as the ENDPOINT argument",
    )
    tap.add_argument(
        "--listen",
        metavar="ENDPOINT",
        help="where clients connect (default: a private unix socket)",
    )
    tap.add_argument(
        "--capacity",
        type=_positive_int,
        default=10_000,
        metavar="FRAMES",
        help="frames kept, oldest dropped first (default 10000)",
    )
    tap.add_argument("--json", type=Path, metavar="FILE", help="write the capture as JSON on exit")
    tap.set_defaults(func=_cmd_tap)

    from .runtime.ctl import add_parser as add_ctl_parser  # parses only: grpc loads on use

    add_ctl_parser(sub)
    return parser


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (argparse turns the error into usage)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small: keep at least 1 frame")
    return value


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
