"""``crilab ctl``: steer a running fake runtime from a shell (its control service).

    crilab serve --listen unix:///tmp/lab.sock &
    crilab ctl --endpoint unix:///tmp/lab.sock error StartContainer UNAVAILABLE --times 2
    crilab ctl latency 0.05 --method ListContainers
    crilab ctl calls --limit 20
    crilab ctl clear

This module only parses arguments (grpc is imported when a command runs, so that
``crilab --help`` stays quick); ``control.RemoteControl`` does the work. It also runs on
its own: ``python -m crilab.runtime.ctl ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

HELP = "steer a running fake runtime (crilab serve): inject faults, reset, list its calls"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``crilab ctl``'s options and actions to ``parser``."""
    parser.add_argument(
        "--endpoint",
        metavar="ENDPOINT",
        help="the runtime: unix:///path.sock or tcp://HOST:PORT "
        "(default: $CONTAINER_RUNTIME_ENDPOINT)",
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for an answer (default 10)"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    error = actions.add_parser("error", help="fail calls of METHOD with a gRPC status CODE")
    error.add_argument("method", metavar="METHOD", help="a CRI method, e.g. StartContainer; * all")
    error.add_argument("code", metavar="CODE", help="a gRPC status code, e.g. UNAVAILABLE")
    error.add_argument("--message", default="", help="the status message the caller gets")
    count = error.add_mutually_exclusive_group()
    count.add_argument("--times", type=int, help="fail this many calls (default: the next one)")
    count.add_argument(
        "--until-cleared", action="store_true", help="fail every call until `crilab ctl clear`"
    )
    error.add_argument(
        "--probability", type=float, help="fail each call with this chance (0..1), until cleared"
    )
    error.add_argument("--seed", type=int, help="make the chance repeatable")

    latency = actions.add_parser(
        "latency", help="delay calls by SECONDS, or by a lognormal draw (--p50, --p99)"
    )
    latency.add_argument("seconds", metavar="SECONDS", type=float, nargs="?")
    latency.add_argument("--p50", type=float, help="lognormal median, seconds")
    latency.add_argument("--p99", type=float, help="lognormal 99th percentile, seconds")
    latency.add_argument("--seed", type=int, help="make the lognormal draws repeatable")
    latency.add_argument("--method", help="only this CRI method (default: every method)")
    latency.add_argument("--times", type=int, help="delay this many calls (default: until clear)")
    latency.add_argument(
        "--ignore-deadline",
        action="store_true",
        help="run the delay in full even after the caller gave up (a server that never checks)",
    )

    actions.add_parser("clear", help="remove every fault; delayed calls go on at once")
    actions.add_parser("reset", help="a fresh runtime: no pods, containers, calls or faults")

    calls = actions.add_parser("calls", help="list the CRI calls the runtime recorded")
    calls.add_argument("--method", help="only calls of this CRI method")
    calls.add_argument("--limit", type=int, default=0, help="only the newest N (default: all)")
    calls.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(func=run)


def add_parser(subcommands: Any) -> None:
    """Register ``ctl`` on ``crilab``'s sub-command parsers (``cli.build_parser``)."""
    configure(subcommands.add_parser("ctl", help=HELP, description=HELP))


def run(args: argparse.Namespace) -> int:
    from ..client import RuntimeUnavailable
    from ..endpoints import EndpointError
    from .control import RemoteControl
    from .instrument import UNSET, Lognormal

    try:
        with RemoteControl(args.endpoint, timeout=args.timeout) as ctl:
            if args.action == "error":
                times: Any = None if args.until_cleared else UNSET
                if args.times is not None:
                    times = args.times
                ctl.inject_error(
                    args.method, args.code, args.message, times, args.probability, args.seed
                )
            elif args.action == "latency":
                ctl.inject_latency(
                    _delay(args, Lognormal),
                    args.method,
                    args.times,
                    ignore_deadline=args.ignore_deadline,
                )
            elif args.action == "clear":
                ctl.clear_faults()
            elif args.action == "reset":
                ctl.reset()
            else:
                _print_calls(ctl.calls(args.method, max(args.limit, 0)), as_json=args.json)
    except RuntimeUnavailable as exc:
        print(f"crilab ctl: {exc}", file=sys.stderr)
        return 1
    except (EndpointError, ValueError, TypeError) as exc:
        print(f"crilab ctl: {exc}", file=sys.stderr)
        return 2
    return 0


def _delay(args: argparse.Namespace, lognormal: Any) -> Any:
    drawn = args.p50 is not None or args.p99 is not None
    if drawn == (args.seconds is not None):
        raise ValueError("give SECONDS (e.g. 0.05) or --p50 and --p99, one of the two")
    if drawn:
        if args.p50 is None or args.p99 is None:
            raise ValueError("a lognormal needs both --p50 and --p99, e.g. --p50 0.002 --p99 0.02")
        return lognormal(args.p50, args.p99, seed=args.seed)
    return args.seconds


def _print_calls(calls: Sequence[Any], *, as_json: bool) -> None:
    for call in calls:
        if as_json:
            print(json.dumps(call.as_dict()))
            continue
        line = f"{call.method} {call.code} {call.duration * 1000:.2f}ms"
        if call.injected:
            line += f" [{call.injected}]"
        if call.details:
            line += f" {call.details}"
        print(line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crilab ctl", description=HELP)
    configure(parser)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
