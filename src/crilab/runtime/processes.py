"""Simulated processes: a tiny shell that runs nothing for real, and the CRI log writer.

crilab's runtime starts no real processes. A container's command (or an ExecSync
command) is interpreted by a tiny shell that *describes* what the process would
do as a lazy stream of steps: write some output, sleep a while, and finally
exit. The runtime's scheduler pulls one step at a time, so an endless
``while true`` loop is just an endless generator and no container needs a thread.

Protocol::

    process = spawn(argv, ctx)
    for step in process.steps():      # Output(stream, data) or Sleep(seconds)
        ...
    process.exit_code                  # set once steps() is exhausted (= StopIteration.value)

``process.sigterm_exit_code`` says what the program running as PID 1 does on
SIGTERM: an exit code if it handles the signal, ``None`` if it ignores it (a
shell or ``sleep`` as PID 1), in which case the runtime kills it after the grace
period (exit 137). ExecSync runs a process to completion with :func:`run_sync`;
:class:`CRILogWriter` writes outputs in the CRI log format that ``crictl logs``
and the kubelet read.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import posixpath
import re
import shlex
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO, Literal, cast

from crilab.runtime.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument
from crilab.runtime.scheduler import capped

Stream = Literal["stdout", "stderr"]
_log = logging.getLogger(__name__)

BUSY_COMMANDS = 1000  # simple commands the shell runs per CPU slice ...
BUSY_SLICE = 0.1  # ... and the simulated time that slice takes: a busy loop still lets time pass
MAX_EXEC_SECONDS = 60.0  # how long ExecSync without a timeout waits before giving up
# ExecSync output cap (stdout + stderr): the reply, with the truncation note and protobuf
# framing, must still fit the 16 MiB message limit, or grpc refuses to send any of it
MAX_EXEC_OUTPUT = 16 * 1024 * 1024 - 64 * 1024
MAX_WORD = 1024 * 1024  # longest word or variable value: stops X=$X$X doubling forever
MAX_FILE_BYTES = 1024 * 1024  # largest simulated file a redirection may grow
MAX_NESTING = 32  # nested loops/ifs in one script, and nested shells
#: Longest command (all of argv, in UTF-8 bytes) a container or an exec may run. Linux refuses
#: far less (one argument over 128 KiB: "argument list too long"); parsing a huge ``sh -c``
#: script costs real CPU time that no simulated clock sees, so the cap bounds it.
MAX_COMMAND_BYTES = 1024 * 1024
DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024  # the kubelet's default containerLogMaxSize
MAX_LOG_LINE = 16 * 1024  # longer lines are split into P chunks, as containerd does

KERNEL_RELEASE = "6.1.0-crilab"
DEFAULT_RESOLV_CONF = (
    "search default.svc.cluster.local svc.cluster.local cluster.local\n"
    "nameserver 10.96.0.10\noptions ndots:5\n"
)


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True, slots=True)
class Output:
    """Bytes the process writes to one of its streams."""

    stream: Stream
    data: bytes


@dataclass(frozen=True, slots=True)
class Sleep:
    """Time passing with no output; ``math.inf`` means "until stopped"."""

    seconds: float


Step = Output | Sleep
Steps = Generator[Step, None, int]


class Killed(Exception):
    """Raised into a running ExecSync when its container exits or is removed: the
    command dies with it (SIGKILL), as every process in a container's PID namespace does."""


def _no_check() -> None:
    return None


@dataclass
class ProcessContext:
    """What a process can see of its container. ``files`` is mutable: share one dict per
    container and a redirection in one exec is visible to the next, as in a real one.

    ``user`` may be an image's USER string ("", "1000", "1000:1000", "nobody"): it is
    resolved against /etc/passwd in ``files`` at construction; "" afterwards means the
    uid has no passwd entry.
    """

    env: dict[str, str] = field(default_factory=dict)
    hostname: str = "localhost"
    files: dict[str, bytes] = field(default_factory=dict)
    working_dir: str = "/"
    user: str = "root"
    uid: int = 0
    gid: int = 0
    pid: int = 1
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        name, _, group = self.user.partition(":")
        passwd = {"root": (0, 0)}
        homes: dict[int, str] = {}
        for line in self.files.get("/etc/passwd", b"").decode(errors="replace").splitlines():
            fields = line.split(":")
            if len(fields) > 3 and fields[2].isdigit() and fields[3].isdigit():
                passwd[fields[0]] = (int(fields[2]), int(fields[3]))
                if len(fields) > 5:
                    homes.setdefault(int(fields[2]), fields[5])
        numeric = name.isascii() and name.isdigit()
        if name in passwd:
            self.uid, self.gid = passwd[name]
        elif numeric:
            self.uid = self.gid = int(name)
        if numeric or not name:  # the name of a numeric (or default) uid, if it has one
            name = next((n for n, (uid, _) in passwd.items() if uid == self.uid), "")
        if group.isascii() and group.isdigit():
            self.gid = int(group)
        self.user = name
        # runc sets HOME when the image and the config leave it out: the user's home in
        # /etc/passwd, else "/" (so `echo $HOME` prints /root for root, as in containerd)
        if self.env is not None and "HOME" not in self.env:
            self.env["HOME"] = homes.get(self.uid) or "/"


def default_files(
    hostname: str,
    os_release: str,
    argv: Sequence[str] = (),
    *,
    ip: str | None = None,
    resolv_conf: str = DEFAULT_RESOLV_CONF,
) -> dict[str, bytes]:
    """The files every container has, so ``cat /etc/hostname`` and friends work.

    An empty ``os_release`` leaves /etc/os-release out, as in the busybox image;
    ``argv`` (PID 1's command) becomes /proc/1/cmdline.
    """
    hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    files = {
        "/etc/hostname": _b(f"{hostname}\n"),
        "/etc/hosts": _b(hosts + (f"{ip}\t{hostname}\n" if ip else "")),
        "/etc/resolv.conf": _b(resolv_conf),
        "/etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        "/etc/group": b"root:x:0:\nnobody:x:65534:\n",
        "/proc/version": f"Linux version {KERNEL_RELEASE} (crilab) #1 SMP\n".encode(),
    }
    if os_release:
        files["/etc/os-release"] = _b(os_release)
    if argv:
        files["/proc/1/cmdline"] = b"".join(_b(a) + b"\0" for a in argv)
    return files


# --------------------------------------------------------------------------- process


class Process:
    """A simulated process. Pull :meth:`steps`; the exit code is its return value."""

    def __init__(self, argv: Sequence[str], ctx: ProcessContext) -> None:
        self.argv = tuple(argv)
        self.ctx = ctx
        self.exit_code: int | None = None
        prog = _lookup(self.argv[0])
        self.pid1 = prog.name if prog else posixpath.basename(self.argv[0])  # what PID 1 runs
        self.sigterm_exit_code: int | None = prog.sigterm_exit_code if prog else None
        #: Called now and then while the shell works without yielding (parsing a long script,
        #: a busy loop): it raises to stop the process (deadline passed, caller gone, killed).
        self.check: Callable[[], None] = _no_check
        self._steps = self._run()

    def steps(self) -> Steps:
        """The one lazy step generator (every call returns the same one).

        Its return value (StopIteration.value) is the exit code, also kept in ``exit_code``.
        """
        return self._steps

    @property
    def handles_sigterm(self) -> bool:
        """Whether PID 1 exits on SIGTERM (with :attr:`sigterm_exit_code`)."""
        return self.sigterm_exit_code is not None

    def close(self) -> None:
        """Abandon the process (it was stopped or killed)."""
        self._steps.close()

    def _run(self) -> Steps:
        # a shell that runs no script: it only launches argv, as runc would
        shell = _Shell(self, dict(self.ctx.env), [self.argv[0]], is_pid1=True, depth=0)
        code = yield from shell.run_command(list(self.argv), shell.vars, is_pid1=True)
        self.exit_code = code
        return code


def exit_code_of(process: Process, stop: StopIteration | None = None) -> int:
    """The exit code of a process whose steps() ended (``stop``: the StopIteration seen)."""
    if process.exit_code is not None:
        return process.exit_code
    return stop.value if stop is not None and isinstance(stop.value, int) else 0


def spawn(argv: Sequence[str], ctx: ProcessContext) -> Process:
    """Start simulating ``argv``. Never fails for a bad script: that becomes exit 2."""
    if not argv:
        raise InvalidArgument("cannot run an empty command: argv has no program name")
    check_command_size(argv)
    return Process(argv, ctx)


def check_command_size(argv: Sequence[str], what: str = "the command") -> None:
    """InvalidArgument when ``argv`` is over MAX_COMMAND_BYTES (a huge ``sh -c`` script)."""
    size = sum(len(a) for a in argv) + len(argv)  # characters, and a NUL after each
    if size * 4 > MAX_COMMAND_BYTES:  # could be over in UTF-8: count the bytes
        size = sum(len(a.encode("utf-8", "surrogatepass")) for a in argv) + len(argv)
    if size > MAX_COMMAND_BYTES:
        raise InvalidArgument(
            f"{what} is {size} bytes long, over crilab's limit of {MAX_COMMAND_BYTES} bytes "
            "(1 MiB; a real Linux refuses one argument over 128 KiB with 'argument list too "
            "long'). Write a shorter script: loop in the shell instead of repeating commands"
        )


def missing_program(argv: Sequence[str]) -> str | None:
    """What runc says when ``argv[0]`` is no executable (None when it is one).

    Only the program that is run directly counts: ``sh -c "foo"`` starts (sh exists) and
    exits 127 later, as a real shell does.
    """
    name = argv[0] if argv else ""
    if program_exists(name):
        return None
    if "/" in name:
        return f'exec: "{name}": stat {name}: no such file or directory'
    return f'exec: "{name}": executable file not found in $PATH'


def resolve_argv(
    entrypoint: Sequence[str] | None,
    cmd: Sequence[str] | None,
    command: Sequence[str] | None,
    args: Sequence[str] | None,
) -> list[str]:
    """Combine image ENTRYPOINT/CMD with the container's command/args as containerd does."""
    entry = [] if list(entrypoint or ()) == [""] else list(entrypoint or ())
    if command:
        argv = [*command, *(args or ())]
    elif args:
        argv = [*entry, *args]
    else:
        argv = [*entry, *(cmd or ())]
    if not argv:
        raise InvalidArgument(
            "no command specified: the image has no entrypoint or cmd and the container "
            "config has no command or args; set command in the container config"
        )
    return argv


def program_names() -> list[str]:
    """The simulated executables, sorted (builtins such as ``exit`` are not files)."""
    return sorted(name for name, prog in _PROGRAMS.items() if not prog.builtin)


def program_exists(name: str) -> bool:
    """Whether ``name`` is a simulated executable (lets a runtime fail StartContainer early)."""
    return _lookup(name) is not None


# --------------------------------------------------------------------------- ExecSync


@dataclass(frozen=True)
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int


def run_sync(
    process: Process,
    timeout: float | None,
    sleep: Callable[[float], object] = time.sleep,
    *,
    check: Callable[[], None] | None = None,
    max_output: int = MAX_EXEC_OUTPUT,
    max_seconds: float = MAX_EXEC_SECONDS,
) -> ExecResult:
    """Run ``process`` to its end for ExecSync, really sleeping through ``sleep``.

    Past ``timeout`` (0/None: none, then ``max_seconds``) it raises DeadlineExceeded;
    so it does when the work itself (parsing a long script, a busy loop) takes that long
    in real time. ``check`` is called between steps and during long work: it raises to
    stop the command (DeadlineExceeded: the caller left; :class:`Killed`: its container
    went, and then the answer is the output so far with exit 137, as for a killed exec).
    Past ``max_output`` bytes it stops the command and returns what fitted, exit 137,
    with a note on stderr: the output is more useful to a learner than an error.
    """
    limited = bool(timeout and timeout > 0)
    limit = float(timeout) if limited and timeout else max_seconds
    wall_end = time.monotonic() + capped(limit)

    def poll() -> None:
        if check is not None:
            check()
        if time.monotonic() > wall_end:
            raise DeadlineExceeded(_deadline_message(process, limit, limited))

    process.check = poll
    out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    total, elapsed = 0, 0.0
    steps = process.steps()
    try:
        for step in steps:
            if isinstance(step, Output):
                if total + len(step.data) > max_output:
                    out[step.stream] += step.data[: max_output - total]
                    out["stderr"] += _truncation_note(max_output)
                    return ExecResult(bytes(out["stdout"]), bytes(out["stderr"]), 137)
                out[step.stream] += step.data
                total += len(step.data)
            elif step.seconds > limit - elapsed:
                if limit > elapsed:
                    sleep(capped(limit - elapsed))
                poll()
                raise DeadlineExceeded(_deadline_message(process, limit, limited))
            else:
                sleep(capped(step.seconds))
                elapsed += step.seconds
            poll()
    except Killed:
        return ExecResult(bytes(out["stdout"]), bytes(out["stderr"]), 137)
    finally:
        process.close()
    code = process.exit_code if process.exit_code is not None else 0
    return ExecResult(bytes(out["stdout"]), bytes(out["stderr"]), code)


def _truncation_note(limit: int) -> bytes:
    return (
        f"\n[crilab: output passed {limit} bytes, so the command was stopped (exit 137) "
        "and its output truncated]\n"
    ).encode()


def _deadline_message(process: Process, limit: float, limited: bool) -> str:
    command = shlex.join(process.argv)
    if limited:
        return (
            f"command {command!r} timed out after {limit:g}s (ExecSync timeout); crilab "
            "stopped it. Give it a longer timeout (crictl exec --timeout) or make it finish sooner."
        )
    return (
        f"command {command!r} was still running after {limit:g}s and ExecSync had no timeout, "
        "so crilab stopped it. ExecSync returns only when the command exits: a command that "
        "runs forever (a server, 'sleep infinity', a 'while true' loop) never returns. Run it "
        "as the container's command instead, or set a timeout."
    )


# --------------------------------------------------------------------------- CRI log files


def format_timestamp(ns: int) -> str:
    """RFC 3339 in UTC with exactly 9 fractional digits, so log lines sort as text."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def _split_log_lines(data: bytes) -> list[tuple[bytes, bytes]]:
    """(tag, text) records: complete lines are F, a trailing fragment and long-line chunks P."""
    lines = data.split(b"\n")
    tail = lines.pop()
    records = []
    for line, tag in [*((line, b"F") for line in lines), *([(tail, b"P")] if tail else [])]:
        chunks = [line[i : i + MAX_LOG_LINE] for i in range(0, len(line), MAX_LOG_LINE)] or [b""]
        records += [(b"P", chunk) for chunk in chunks[:-1]] + [(tag, chunks[-1])]
    return records


class CRILogWriter:
    """Appends a container's output to its log file in the CRI format, thread-safely.

    Rotates once to ``path + ".1"`` past ``max_bytes`` so a chatty loop cannot
    fill the disk (as the kubelet's log rotation would). A file error never stops the
    container: a rotation that fails is logged and rotation stops (the file grows on),
    a write that fails is logged and its output dropped (``error`` says what happened).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_LOG_MAX_BYTES,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None
        self._size = 0
        self.rotating = True  # False once a rotation failed
        self.error = ""  # the last file error, for a learner or a test to read
        self.reopen()  # the empty file exists at once: `crictl logs` works before any output

    def write(self, stream: Stream, data: bytes, when_ns: int | None = None) -> None:
        if stream not in ("stdout", "stderr"):
            raise InvalidArgument(f"log stream must be stdout or stderr, not {stream!r}")
        if not data:
            return
        prefix = f"{format_timestamp(self._clock_ns() if when_ns is None else when_ns)} {stream} "
        records = [
            prefix.encode() + tag + b" " + text + b"\n" for tag, text in _split_log_lines(data)
        ]
        with self._lock:
            if self._file is None:
                raise FailedPrecondition(f"log file {self.path} is closed: reopen it first")
            batch = bytearray()
            try:
                for record in records:
                    size = self._size + len(batch)
                    # never rotate an empty file
                    if self.rotating and size and size + len(record) > self.max_bytes:
                        self._flush(batch)
                        self._rotate()
                    batch += record
                self._flush(batch)
            except OSError as exc:  # disk full, I/O error: the output is lost, not the process
                self._failed(f"cannot write to {self.path}: {_reason(exc)}; output was dropped")

    def reopen(self) -> None:
        """Open ``path`` anew (ReopenContainerLog, after the kubelet moved the file).

        Raises OSError if it cannot be opened; the file in use before (if any) then stays
        in use, so a failed reopen changes nothing.
        """
        with self._lock:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            new = open(self.path, "ab", buffering=0)  # noqa: SIM115 -- long-lived
            try:
                size = os.fstat(new.fileno()).st_size
            except OSError:
                new.close()
                raise
            self._close()
            self._file, self._size, self.rotating = new, size, True

    def close(self) -> None:
        with self._lock:
            self._close()

    def __enter__(self) -> CRILogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _flush(self, batch: bytearray) -> None:
        if batch:
            assert self._file is not None
            self._file.write(batch)
            self._size += len(batch)
            batch.clear()

    def _rotate(self) -> None:
        """Move the full file to ``path.1`` and start an empty one; on failure keep the
        file in use (moved back if it was moved) and stop rotating."""
        try:
            with contextlib.suppress(FileNotFoundError):  # somebody else moved it already
                os.replace(self.path, self.path + ".1")
        except OSError as exc:
            self._rotation_failed(exc)
            return
        try:
            new = open(self.path, "ab", buffering=0)  # noqa: SIM115 -- long-lived
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.replace(self.path + ".1", self.path)
            self._rotation_failed(exc)
            return
        self._close()
        self._file, self._size = new, 0

    def _rotation_failed(self, exc: OSError) -> None:
        self.rotating = False
        self._failed(
            f"cannot rotate {self.path} to {self.path}.1: {_reason(exc)}; the log now grows "
            f"past {self.max_bytes} bytes. Make {os.path.dirname(self.path)} a writable "
            "directory holding no directory of that name, then ReopenContainerLog"
        )

    def _failed(self, message: str) -> None:
        if message != self.error:  # once per kind of failure, not once per line
            _log.warning("crilab container log: %s", message)
        self.error = message

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


_LOG_LINE = re.compile(r"(\S+) (stdout|stderr) ([FP]) (.*)", re.S)


def parse_cri_log(text: str | bytes) -> list[tuple[str, str, str, str]]:
    """(timestamp, stream, tag, text) per line of a CRI log; ValueError on a malformed line."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    entries = []
    for number, line in enumerate(lines, 1):
        match = _LOG_LINE.fullmatch(line)
        if match is None:
            raise ValueError(f"line {number} is not in CRI log format: {line!r}")
        entries.append((match[1], match[2], match[3], match[4]))
    return entries


# --------------------------------------------------------------------------- shell: parsing


class _SyntaxError(Exception):
    """A script that does not parse: the shell prints it and exits 2."""


class _ShellError(Exception):
    """A fatal expansion error (bad substitution, word too long): the shell exits 2."""


class _Exit(Exception):
    """``exit``, or ``set -e`` after a failure: unwinds to the top of the script."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class _Word:
    """A word as (kind, text) parts, kind "q" quoted literal, "d" double-quoted or "u" unquoted:
    the quote kinds that shlex drops and that ``$VAR`` expansion needs."""

    parts: tuple[tuple[str, str], ...]

    @property
    def plain(self) -> str | None:
        """The text of a wholly unquoted word: only those can be keywords like ``done``."""
        return self.parts[0][1] if len(self.parts) == 1 and self.parts[0][0] == "u" else None


_Token = _Word | str  # a str is an operator: ; & && || | ( ) \n, or a redirection like 2>&
_Node = tuple  # ("cmd", assigns, words, redirects) ("seq", items) ("andor", first, rest)
# ("pipe", commands) ("while", cond, body) ("for", name, words, body) ("redir", node, redirects)
_REDIRECT = re.compile(r"([0-9]{0,3})(>>|>&|<&|>|<)")
_ASSIGN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNSUPPORTED = ("if", "case", "until", "function", "select", "{", "}", "(", ")", "`", "$(")


def _unsupported(what: str) -> _SyntaxError:
    return _SyntaxError(
        f"{what!r} is not supported by crilab's simulated shell "
        "(it knows ; && || newlines, while and for loops, redirections and $VARIABLES)"
    )


_PLAIN = re.compile(r"[^ \t\n\\'\"<>;&|()`$#]+")  # a run of characters with no meaning to the lexer
_QUOTED_SPECIAL = re.compile(r'["\\`$]')  # what ends or escapes inside "..."
_CHECK_EVERY = 1024  # tokens (or parsed commands) between two looks at Process.check


def _lex(script: str, check: Callable[[], None] = _no_check) -> list[_Token]:
    """Split a script into words, keeping quote kinds, and operators.

    Runs of plain characters are taken at once, and a word's text is joined once at its
    end (adding one character at a time to a string made a 1 MiB word take seconds).
    """
    tokens: list[_Token] = []
    parts: list[tuple[str, list[str]]] = []

    def add(kind: str, text: str) -> None:
        if parts and parts[-1][0] == kind:
            parts[-1][1].append(text)
        else:
            parts.append((kind, [text]))

    def flush() -> None:
        if parts:
            tokens.append(_Word(tuple((kind, "".join(texts)) for kind, texts in parts)))
            parts.clear()
            if len(tokens) % _CHECK_EVERY == 0:
                check()

    def lone_number() -> str:
        """The text of the word so far if it is one unquoted ASCII number (the 2 of 2>&1)."""
        if len(parts) == 1 and parts[0][0] == "u":
            text = "".join(parts[0][1])
            if text.isascii() and text.isdigit():
                return text
        return ""

    i = 0
    while i < len(script):
        c, two = script[i], script[i : i + 2]
        if plain := _PLAIN.match(script, i):
            add("u", plain[0])
            i = plain.end()
            continue
        if c in " \t":
            flush()
        elif c == "\\":
            if two != "\\\n":  # backslash-newline continues the line
                add("q", script[i + 1 : i + 2] or "\\")
            i += 1
        elif c == "#" and not parts:  # a comment runs up to the newline
            end = script.find("\n", i)
            i = (len(script) if end < 0 else end) - 1
        elif c == "'":
            end = script.find("'", i + 1)
            if end < 0:
                raise _SyntaxError("unterminated quoted string")
            add("q", script[i + 1 : end])
            i = end
        elif c == '"':
            i = _lex_double_quoted(script, i + 1, add)
        elif c in "<>":
            fd = lone_number()
            if fd:
                parts.clear()
            flush()
            tokens.append(fd + (two if two in (">>", ">&", "<&") else c))
            i += len(tokens[-1]) - len(fd) - 1
        elif c in ";&|()\n":
            flush()
            tokens.append(two if two in ("&&", "||", ";;") else c)
            i += len(tokens[-1]) - 1
        elif c == "`" or two == "$(":
            raise _unsupported(c if c == "`" else two)
        elif two == "${":
            end = script.find("}", i)
            if end < 0:
                raise _SyntaxError("bad substitution")
            add("u", script[i : end + 1])
            i = end
        else:
            add("u", c)
        i += 1
    flush()
    return tokens


def _lex_double_quoted(script: str, i: int, add: Callable[[str, str], None]) -> int:
    """Read a "..." string from ``i``; return the index of its closing quote."""
    start = i
    while (special := _QUOTED_SPECIAL.search(script, i)) is not None:
        i = special.start()
        if script[i] == '"':
            break
        two = script[i : i + 2]
        if two[:1] == "`" or two == "$(":
            raise _unsupported(two[:1] if two[:1] == "`" else two)
        if two[:1] == "\\" and two[1:] in ('"', "\\", "$", "`", "\n") and len(two) == 2:
            add("d", script[start:i])
            add("q", two[1].strip("\n"))  # \" \\ \$ \` are literal; backslash-newline vanishes
            start = i = i + 2
        else:
            i += 1
    if special is None:
        raise _SyntaxError("unterminated quoted string")
    add("d", script[start:i])
    return i


class _Parser:
    """Recursive descent over a small POSIX subset: lists, && and ||, while and for loops."""

    def __init__(self, script: str, check: Callable[[], None] = _no_check) -> None:
        self.tokens, self.pos, self.depth = _lex(script, check), 0, 0
        self.check, self.parsed = check, 0

    def parse(self) -> _Node:
        tree = self.parse_list(())
        if self.peek() is not None:
            raise self.unexpected()
        return tree

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, *texts: str) -> str | None:
        """Consume the next token if it is one of these operators or keywords."""
        token = self.peek()
        text = token.plain if isinstance(token, _Word) else token
        if text is None or text not in texts:
            return None
        self.pos += 1
        return text

    def skip_newlines(self) -> None:
        while self.take("\n"):
            pass

    def unexpected(self, expecting: str = "") -> _SyntaxError:
        token = self.peek()
        if token is None:
            return _SyntaxError(
                "unexpected end of file" + f' (expecting "{expecting}")' * bool(expecting)
            )
        text = "".join(t for _, t in token.parts) if isinstance(token, _Word) else token
        if text in _UNSUPPORTED:
            return _unsupported(text)
        return _SyntaxError("unexpected newline" if text == "\n" else f'unexpected "{text}"')

    def expect(self, keyword: str) -> None:
        if not self.take(keyword):
            raise self.unexpected(keyword)

    def parse_list(self, stop: tuple[str, ...]) -> _Node:
        items = []
        while True:
            self.skip_newlines()
            token = self.peek()
            if token is None or (isinstance(token, _Word) and token.plain in stop):
                break
            items.append(self.parse_and_or())
            self.parsed += 1
            if self.parsed % _CHECK_EVERY == 0:
                self.check()
            if not self.take(";", "&", "\n"):  # `a & b` runs a, then b: no job control
                break
        if stop and not items:  # a loop needs a condition and a body
            raise self.unexpected(stop[0])
        return ("seq", tuple(items))

    def parse_and_or(self) -> _Node:
        first, rest = self.parse_pipeline(), []
        while op := self.take("&&", "||"):
            self.skip_newlines()
            rest.append((op, self.parse_pipeline()))
        return ("andor", first, tuple(rest)) if rest else first

    def parse_pipeline(self) -> _Node:
        commands = [self.parse_command()]
        while self.take("|"):
            self.skip_newlines()
            commands.append(self.parse_command())
        return ("pipe", tuple(commands)) if len(commands) > 1 else commands[0]

    def parse_command(self) -> _Node:
        token = self.peek()
        keyword = token.plain if isinstance(token, _Word) else None
        if keyword in ("do", "done", *_UNSUPPORTED):
            raise self.unexpected()
        if keyword not in ("while", "for"):
            return self.parse_simple()
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise _SyntaxError("loops nested too deeply")
        node = self.parse_while() if keyword == "while" else self.parse_for()
        self.depth -= 1
        redirects = []
        while isinstance(token := self.peek(), str) and _REDIRECT.fullmatch(token):
            redirects.append(self.parse_redirect())
        return ("redir", node, tuple(redirects)) if redirects else node

    def parse_simple(self) -> _Node:
        assigns, words, redirects = [], [], []
        while (token := self.peek()) is not None:
            if isinstance(token, str):
                if not _REDIRECT.fullmatch(token):
                    break
                redirects.append(self.parse_redirect())
                continue
            self.pos += 1
            kind, text = token.parts[0]
            match = _ASSIGN.match(text) if kind == "u" and not words else None
            if match:
                value = _Word((("u", text[match.end() :]), *token.parts[1:]))
                assigns.append((match[1], value))
            else:
                words.append(token)
        if not (assigns or words or redirects):
            raise self.unexpected()
        return ("cmd", tuple(assigns), tuple(words), tuple(redirects))

    def parse_redirect(self) -> tuple[str, _Word]:
        op = self.tokens[self.pos]
        self.pos += 1
        target = self.peek()
        if not isinstance(target, _Word):
            raise self.unexpected()
        self.pos += 1
        return op, target  # type: ignore[return-value]

    def parse_while(self) -> _Node:
        self.pos += 1
        cond = self.parse_list(("do",))
        self.expect("do")
        body = self.parse_list(("done",))
        self.expect("done")
        return ("while", cond, body)

    def parse_for(self) -> _Node:
        self.pos += 1
        token = self.peek()
        name = token.plain if isinstance(token, _Word) else None
        if name is None or not _NAME.fullmatch(name):
            raise _SyntaxError("bad for loop variable")
        self.pos += 1
        self.skip_newlines()
        words = None  # no `in`: loop over "$@"
        if self.take("in"):
            words = []
            while isinstance(token := self.peek(), _Word):
                words.append(token)
                self.pos += 1
            if not self.take(";", "\n"):
                raise self.unexpected()
        else:
            self.take(";")
        self.skip_newlines()
        self.expect("do")
        body = self.parse_list(("done",))
        self.expect("done")
        return ("for", name, words, body)


# --------------------------------------------------------------------------- shell: running

_DOLLAR = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*|[0-9?$#@*!]))")
_BRACE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*|[0-9?$#@*!])(?:(:?-)(.*))?", re.S)


@dataclass(slots=True)
class _Call:
    """One program invocation: what a real process gets, plus the shell that ran it."""

    args: list[str]
    env: dict[str, str]
    stdin: bytes
    shell: _Shell
    is_pid1: bool


def _abspath(cwd: str, path: str) -> str:
    return "/" + posixpath.normpath(posixpath.join(cwd, path)).lstrip("/")


class _Shell:
    """Runs a parsed script as a step generator; also the launcher of a plain argv."""

    def __init__(
        self, proc: Process, env: dict[str, str], params: list[str], *, is_pid1: bool, depth: int
    ) -> None:
        self.proc, self.ctx, self.vars, self.params = proc, proc.ctx, env, params
        self.is_pid1, self.depth = is_pid1, depth
        self.cwd = _abspath("/", proc.ctx.working_dir or "/")
        self.status, self.busy, self.in_condition, self.errexit = 0, 0, 0, False
        self.sole: _Node | None = None

    def path(self, path: str) -> str:
        return _abspath(self.cwd, path)

    def run_command(
        self,
        args: list[str],
        env: dict[str, str],
        *,
        stdin: bytes = b"",
        is_pid1: bool = False,
        builtins: bool = False,
        caller: str = "sh",
    ) -> Steps:
        """Run one program; as PID 1, it takes over the process's signal handling."""
        prog = _lookup(args[0], builtins=builtins)
        if prog is None:
            if caller == "env":
                yield _err(f"env: can't execute '{args[0]}': No such file or directory\n")
            else:
                yield _err(f"{caller}: {args[0]}: not found\n")
            return 127
        if is_pid1:
            self.proc.pid1, self.proc.sigterm_exit_code = prog.name, prog.sigterm_exit_code
        return (yield from prog.run(_Call(list(args), env, stdin, self, is_pid1)))

    def run_script(self, script: str) -> Steps:
        try:
            tree = _Parser(script, self.proc.check).parse()
        except _SyntaxError as e:
            yield _err(f"sh: syntax error: {e}\n")
            return 2
        if len(tree[1]) == 1 and tree[1][0][0] == "cmd":
            self.sole = tree[1][0]  # `sh -c 'nginx'` execs nginx, as ash and bash do
        try:
            yield from self.run(tree)
        except _Exit as e:
            return e.code
        except _ShellError as e:
            yield _err(f"sh: {e}\n")
            return 2
        return self.status

    def run(self, node: _Node) -> Steps:
        match node:
            case ("cmd", _, _, _):
                yield from self.run_simple(node)
            case ("seq", items):
                for item in items:
                    yield from self.run(item)
            case ("andor", first, rest):
                yield from self.condition(first)
                for i, (op, rhs) in enumerate(rest):
                    if (op == "&&") == (self.status == 0):
                        yield from self.run(rhs) if i == len(rest) - 1 else self.condition(rhs)
            case ("pipe", _):
                yield from self.tick()
                yield _err("sh: pipes (|) are not supported by crilab's simulated shell\n")
                self.set_status(2)
            case ("while", cond, body):
                last = 0
                while (yield from self.condition(cond)) == 0:
                    last = yield from self.run(body)
                self.status = last
            case ("for", name, words, body):
                self.status = 0
                values = (
                    self.params[1:] if words is None else [v for w in words for v in self.expand(w)]
                )
                for value in values:
                    self.vars[name] = value
                    yield from self.run(body)
            case ("redir", inner, redirects):
                self.status = yield from self.redirected(lambda _: self.run(inner), redirects)
        return self.status

    def condition(self, node: _Node) -> Steps:
        """Run a tested command (loop condition, left of && ||): ``set -e`` lets it fail."""
        self.in_condition += 1
        try:
            return (yield from self.run(node))
        finally:
            self.in_condition -= 1

    def tick(self) -> Iterator[Step]:
        """Charge each command some CPU time, so a busy loop still yields and time passes."""
        self.busy += 1
        if self.busy % 64 == 0:
            self.proc.check()
        if self.busy >= BUSY_COMMANDS:
            self.busy = 0
            yield Sleep(BUSY_SLICE)

    def set_status(self, code: int) -> int:
        self.status = code
        if code and self.errexit and not self.in_condition:
            raise _Exit(code)
        return code

    def run_simple(self, node: _Node) -> Steps:
        _, assigns, words, redirects = node
        yield from self.tick()
        args = [value for word in words for value in self.expand(word)]
        values = {name: self.expand_one(word) for name, word in assigns}
        if not args:  # `X=1` sets a variable; `> file` alone creates the file
            for name, value in values.items():
                self.vars[name] = value
            return self.set_status((yield from self.redirected(lambda _: _exit_with(0), redirects)))
        env = {**self.vars, **values} if values else self.vars
        pid1 = self.is_pid1 and node is self.sole

        def start(stdin: bytes) -> Steps:
            return self.run_command(args, env, stdin=stdin, is_pid1=pid1, builtins=True)

        return self.set_status((yield from self.redirected(start, redirects)))

    def redirected(self, start: Callable[[bytes], Steps], redirects: tuple) -> Steps:
        """Run ``start(stdin)`` with its streams sent to streams, files or /dev/null."""
        route, stdin = {"stdout": "stdout", "stderr": "stderr"}, b""
        for op, word in redirects:
            target = self.expand_one(word)
            fd_text, kind = _REDIRECT.fullmatch(op).groups()  # type: ignore[union-attr]
            fd = int(fd_text) if fd_text else int(kind[0] == ">")
            if kind == "<":
                data = self.ctx.files.get(self.path(target))
                if data is None:
                    yield _err(f"sh: can't open '{target}': No such file or directory\n")
                    return 1
                stdin = data if fd == 0 else stdin
                continue
            if kind in (">&", "<&") and target in ("1", "2", "-"):
                dest = {"1": route["stdout"], "2": route["stderr"], "-": "/dev/null"}[target]
            elif kind in (">&", "<&") and target.isdigit():
                yield _err(f"sh: {target}: Bad file descriptor\n")
                return 1
            elif (dest := self.open_for_write(target, kind == ">>", route)) == "":
                yield _err(f"sh: can't create {target}: Is a directory\n")
                return 1
            if fd in (1, 2):
                route["stdout" if fd == 1 else "stderr"] = dest
        return (yield from self.routed(start(stdin), route))

    def open_for_write(self, target: str, append: bool, route: dict[str, str]) -> str:
        """Where ``> target`` writes: a stream, /dev/null or a (truncated) file; "" for a dir."""
        full = self.path(target)
        special = {"/dev/stdout": route["stdout"], "/dev/stderr": route["stderr"]}
        if full in special or full == "/dev/null":
            return special.get(full, full)
        if _listdir(self.ctx, full) is not None:
            return ""
        if not append or full not in self.ctx.files:
            self.ctx.files[full] = b""
        return full

    def routed(self, steps: Steps, route: dict[str, str]) -> Steps:
        try:
            while True:
                try:
                    step = next(steps)
                except StopIteration as stop:
                    return stop.value
                if isinstance(step, Sleep) or route[step.stream] == step.stream:
                    yield step
                elif (dest := route[step.stream]) in ("stdout", "stderr"):
                    yield Output(cast(Stream, dest), step.data)
                elif dest != "/dev/null" and not self.append_file(dest, step.data):
                    yield _err("sh: write error: No space left on device\n")
        finally:
            steps.close()

    def append_file(self, path: str, data: bytes) -> bool:
        old = self.ctx.files.get(path, b"")
        if len(old) + len(data) > MAX_FILE_BYTES:
            return False
        self.ctx.files[path] = old + data
        return True

    def expand(self, word: _Word) -> list[str]:
        """Expand ``$`` in a word; unquoted expansions split into several fields."""
        fields: list[str] = []
        cur, has = "", False  # `has`: the current field exists, even if empty ("")
        for kind, text in word.parts:
            if kind != "u":
                cur, has = cur + (text if kind == "q" else self.expand_text(text)), True
                continue
            for is_var, piece in self.pieces(text):
                if not is_var:
                    cur, has = cur + piece, has or bool(piece)
                    continue
                for j, value in enumerate(piece.split()):
                    if has and (j or piece[:1].isspace()):
                        fields.append(cur)
                        cur = ""
                    cur, has = _check_length(cur + value), True
                if piece[-1:].isspace() and has:
                    fields.append(cur)
                    cur, has = "", False
        return [*fields, cur] if has else fields

    def expand_one(self, word: _Word) -> str:
        """Expand a word without splitting it (assignments, redirection targets)."""
        return "".join(text if kind == "q" else self.expand_text(text) for kind, text in word.parts)

    def expand_text(self, text: str) -> str:
        return _check_length("".join(piece for _, piece in self.pieces(text)))

    def pieces(self, text: str) -> Iterator[tuple[bool, str]]:
        """Literal text and variable values in order, as (is_variable, text)."""
        pos = 0
        for match in _DOLLAR.finditer(text):
            if match.start() > pos:
                yield False, text[pos : match.start()]
            yield True, self.brace(match[1]) if match[1] is not None else self.lookup(match[2])
            pos = match.end()
        if pos < len(text):
            yield False, text[pos:]

    def brace(self, expr: str) -> str:
        """``${NAME}``, ``${NAME:-default}`` (unset or empty) and ``${NAME-default}`` (unset)."""
        match = _BRACE.fullmatch(expr)
        if match is None:
            raise _ShellError(f"${{{expr}}}: bad substitution")
        value = self.lookup(match[1])
        unset = not value and (match[2] == ":-" or match[1] not in self.vars)
        return self.expand_text(match[3]) if match[2] and unset else value

    def lookup(self, name: str) -> str:
        params = " ".join(self.params[1:])
        special = {"?": str(self.status), "$": str(self.ctx.pid), "#": str(len(self.params) - 1)}
        special |= {"@": params, "*": params, "!": ""}
        if name in special:
            return special[name]
        if name.isdigit():
            return self.params[int(name)] if int(name) < len(self.params) else ""
        fallback = {"HOSTNAME": self.ctx.hostname, "PWD": self.cwd}
        return self.vars.get(name, fallback.get(name, ""))


def _check_length(text: str) -> str:
    if len(text) > MAX_WORD:
        raise _ShellError(f"out of memory: a word grew past {MAX_WORD} characters")
    return text


# --------------------------------------------------------------------------- programs


@dataclass(frozen=True)
class _Program:
    name: str
    run: Callable[[_Call], Steps]
    sigterm_exit_code: int | None = None  # None: ignores SIGTERM as PID 1
    builtin: bool = False  # a shell builtin (exit, export...), not an executable file


_PROGRAMS: dict[str, _Program] = {}
_BIN_DIRS = ("/", "/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin")
_STANDARD_DIRS = ("/bin", "/dev", "/etc", "/home", "/proc", "/root", "/sys", "/tmp", "/usr", "/var")


def _program(
    *names: str, sigterm_exit_code: int | None = None, builtin: bool = False
) -> Callable[[Callable[[_Call], Steps]], Callable[[_Call], Steps]]:
    def register(run: Callable[[_Call], Steps]) -> Callable[[_Call], Steps]:
        for name in names:
            _PROGRAMS[name] = _Program(name, run, sigterm_exit_code, builtin)
        return run

    return register


def _lookup(name: str, *, builtins: bool = False) -> _Program | None:
    """The program ``name`` runs: /bin/echo is echo, but /etc/echo is nothing."""
    directory, base = posixpath.split(name)
    if directory and directory not in _BIN_DIRS and base != "docker-entrypoint.sh":
        return None
    prog = _PROGRAMS.get(base)
    return None if prog is None or (prog.builtin and not builtins) else prog


def _b(data: str | bytes) -> bytes:
    return data if isinstance(data, bytes) else data.encode("utf-8", "replace")


def _out(data: str | bytes) -> Output:
    return Output("stdout", _b(data))


def _err(data: str | bytes) -> Output:
    return Output("stderr", _b(data))


def _exit_with(code: int, *steps: Step) -> Steps:
    """Yield ``steps`` (skipping empty outputs), then exit: the shape of instant programs."""
    yield from (s for s in steps if not (isinstance(s, Output) and not s.data))
    return code


def _listdir(ctx: ProcessContext, path: str) -> set[str] | None:
    """Names in a simulated directory, or None if ``path`` is not one."""
    prefix, workdir = path.rstrip("/") + "/", _abspath("/", ctx.working_dir or "/")
    known = (*ctx.files, *_STANDARD_DIRS, workdir)
    names = {p[len(prefix) :].split("/")[0] for p in known if p.startswith(prefix) and p != prefix}
    return names if names or path in ("/", *_STANDARD_DIRS, workdir) else None


_ESCAPES = dict(zip("abefnrtv\\", "\a\b\x1b\f\n\r\t\v\\", strict=True))
_ECHO_OCTAL = re.compile(r"0([0-7]{0,3})")
_PRINTF_OCTAL = re.compile(r"([0-7]{1,3})")
_HEX = re.compile(r"x([0-9a-fA-F]{1,2})")


def _unescape(text: str, octal: re.Pattern[str]) -> tuple[str, bool]:
    """Backslash escapes of ``echo -e`` and printf; True if ``\\c`` asked to stop output."""
    out, i = [], 0
    while i < len(text):
        nxt = text[i + 1 : i + 2]
        if text[i] != "\\" or not nxt:
            out.append(text[i])
        elif nxt == "c":
            return "".join(out), True
        elif nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 1
        elif match := octal.match(text, i + 1) or _HEX.match(text, i + 1):
            out.append(chr(int(match[1] or "0", 16 if match[0][0] == "x" else 8) & 0xFF))
            i = match.end() - 1
        else:
            out.append("\\")
        i += 1
    return "".join(out), False


@_program("echo")
def _echo(call: _Call) -> Steps:
    args, newline, escapes = call.args[1:], True, False
    while args and re.fullmatch(r"-[neE]+", args[0]):
        for flag in args.pop(0)[1:]:
            newline = newline and flag != "n"
            escapes = flag == "e" or (escapes and flag != "E")
    text, stopped = _unescape(" ".join(args), _ECHO_OCTAL) if escapes else (" ".join(args), False)
    return _exit_with(0, _out(text + "\n" * (newline and not stopped)))


_FORMAT = re.compile(r"%([-+ #0]*)([0-9]*)(?:\.([0-9]*))?(.?)", re.S)


@_program("printf")
def _printf(call: _Call) -> Steps:
    if len(call.args) < 2:
        return _exit_with(1, _err("printf: usage: printf FORMAT [ARGUMENT]...\n"))
    fmt, stopped = _unescape(call.args[1], _PRINTF_OCTAL)
    args, out, errors = call.args[2:], [], []
    while True:  # the format is reused while arguments remain
        text, used, fatal = _format_once(fmt, args, errors)
        out.append(text)
        args = args[used:]
        if fatal or stopped or not used or not args:
            break
    return _exit_with(int(bool(errors)), _out("".join(out)), *map(_err, errors))


def _format_once(fmt: str, args: list[str], errors: list[str]) -> tuple[str, int, bool]:
    """One pass over the format: (text, arguments used, whether a bad format stopped it)."""
    pieces, used, pos = [], 0, 0
    for m in _FORMAT.finditer(fmt):
        pieces.append(fmt[pos : m.start()])
        pos = m.end()
        flags, width, prec, conv = m.groups()
        if conv in ("%", ""):  # `%%`, or a lone `%` at the end
            pieces.append("%")
        elif conv not in "diouxXcsbfeEgG" or len(width) > 4 or len(prec or "") > 4:
            errors.append(f"printf: {m[0]}: invalid format\n")
            return "".join(pieces), used, True
        else:
            arg = args[used] if used < len(args) else None
            used += arg is not None
            spec = f"%{flags}{width}" + ("" if prec is None else f".{prec}")
            pieces.append(_convert(spec, conv, arg, errors))
    return "".join([*pieces, fmt[pos:]]), used, False


def _convert(spec: str, conv: str, arg: str | None, errors: list[str]) -> str:
    text = arg or ""
    if conv in "sbc":
        text = _unescape(text, _ECHO_OCTAL)[0] if conv == "b" else text[:1] if conv == "c" else text
        return (spec + "s") % text
    if conv in "diouxX":
        return (spec + ("d" if conv in "iu" else conv)) % _to_int(text, errors)
    try:
        return (spec + conv) % float(text or 0)
    except ValueError:
        errors.append(f"printf: invalid number '{text}'\n")
        return (spec + conv) % 0.0


def _to_int(text: str, errors: list[str]) -> int:
    text = text.strip() or "0"
    if text[:1] in ("'", '"'):  # 'A is the character code of A
        return ord(text[1]) if len(text) > 1 else 0
    m = re.fullmatch(r"([+-]?)(0[xX][0-9a-fA-F]{1,16}|0[0-7]{0,21}|[1-9][0-9]{0,18})", text)
    if m is None:
        errors.append(f"printf: invalid number '{text}'\n")
        return 0
    base = 16 if m[2][:2] in ("0x", "0X") else 8 if m[2][:1] == "0" else 10
    return int(m[2], base) * (-1 if m[1] == "-" else 1)


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@_program("sleep")
def _sleep(call: _Call) -> Steps:
    if len(call.args) < 2:
        return _exit_with(1, _err("sleep: missing operand\n"))
    total = 0.0
    for arg in call.args[1:]:
        match = _DURATION.fullmatch(arg)
        if arg in ("inf", "infinity"):
            total = math.inf
        elif match is None:
            return _exit_with(1, _err(f"sleep: invalid number '{arg}'\n"))
        else:
            total += float(match[1]) * _UNITS[match[2]]
    return _exit_with(0, *([Sleep(total)] if total > 0 else []))


@_program("true")
@_program(":", builtin=True)
def _true(call: _Call) -> Steps:
    return _exit_with(0)


@_program("false")
def _false(call: _Call) -> Steps:
    return _exit_with(1)


@_program("exit", builtin=True)
def _exit(call: _Call) -> Steps:
    arg = call.args[1] if len(call.args) > 1 else None
    if arg is not None and not re.fullmatch(r"[0-9]{1,9}", arg):
        yield _err(f"sh: exit: Illegal number: {arg}\n")
        raise _Exit(2)
    raise _Exit(int(arg) & 0xFF if arg else call.shell.status)


@_program("cd", builtin=True)
def _cd(call: _Call) -> Steps:
    sh = call.shell
    target = call.args[1] if len(call.args) > 1 else sh.vars.get("HOME", "/")
    if _listdir(sh.ctx, sh.path(target)) is None:
        return _exit_with(2, _err(f"sh: cd: can't cd to {target}: No such file or directory\n"))
    sh.cwd = sh.path(target)
    return _exit_with(0)


@_program("export", builtin=True)
def _export(call: _Call) -> Steps:
    """Every shell variable is in the environment already: export only assigns."""
    for arg in call.args[1:]:
        name, eq, value = arg.partition("=")
        if not _NAME.fullmatch(name):
            return _exit_with(2, _err(f"sh: export: {arg}: bad variable name\n"))
        if eq:
            call.shell.vars[name] = value
    return _exit_with(0)


@_program("set", builtin=True)
def _set(call: _Call) -> Steps:
    """``set -e`` / ``set +e``; other options (-u -x -o ...) are accepted and ignored."""
    for arg in call.args[1:]:
        if arg[:1] in ("-", "+") and "e" in arg[1:]:
            call.shell.errexit = arg[0] == "-"
    return _exit_with(0)


@_program("trap", builtin=True)
def _trap(call: _Call) -> Steps:
    """``trap 'exit 0' TERM`` in a PID 1 shell makes the container stop cleanly on SIGTERM."""
    action, signals = (call.args[1], call.args[2:]) if len(call.args) > 2 else ("-", [])
    if call.shell.is_pid1 and any(s.upper().removeprefix("SIG") in ("TERM", "15") for s in signals):
        match = re.search(r"(?:^|[;&|\n])\s*exit(?:\s+([0-9]{1,3}))?\s*;?\s*$", action)
        # `exit` alone exits with the interrupted command's status, 128+15; other actions run
        # and the script goes on, so SIGTERM still does not stop it
        code = (int(match[1]) & 0xFF if match[1] else 143) if match else None
        call.shell.proc.sigterm_exit_code = code
    return _exit_with(0)


@_program("exec", builtin=True)
def _exec(call: _Call) -> Steps:
    """Replace the shell: if it was PID 1, the new program is (and handles signals)."""
    if len(call.args) < 2:
        return 0
    sh = call.shell
    raise _Exit((yield from sh.run_command(call.args[1:], call.env, is_pid1=sh.is_pid1)))


@_program("env")
def _env(call: _Call) -> Steps:
    args, env = call.args[1:], dict(call.env)
    while args and "=" in args[0]:
        name, value = args.pop(0).split("=", 1)
        env[name] = value
    if args:
        sh = call.shell
        return sh.run_command(args, env, stdin=call.stdin, is_pid1=call.is_pid1, caller="env")
    return _exit_with(0, _out("".join(f"{k}={v}\n" for k, v in env.items())))


@_program("sh", "bash", "ash", "dash")
def _sh(call: _Call) -> Steps:
    """``sh -c SCRIPT [NAME ARGS...]``, ``sh FILE``, or ``sh`` reading its (empty) stdin."""
    parent, args = call.shell, call.args[1:]
    if parent.depth >= MAX_NESTING:
        yield _err("sh: too many nested shells\n")
        return 2
    command, errexit = False, False
    while args and args[0].startswith("-") and len(args[0]) > 1:
        for flag in args.pop(0)[1:]:
            if flag not in "ceilsux":
                yield _err(f"sh: illegal option -{flag}\n")
                return 2
            command, errexit = command or flag == "c", errexit or flag == "e"
    if command and not args:
        yield _err("sh: -c requires an argument\n")
        return 2
    if command:
        script, params = args[0], args[1:] or [call.args[0]]
    elif args:
        data = parent.ctx.files.get(parent.path(args[0]))
        if data is None:
            yield _err(f"sh: can't open '{args[0]}': No such file or directory\n")
            return 2
        script, params = data.decode(errors="replace"), args
    else:  # no tty and no stdin: the shell reads EOF and exits 0 (busybox's default CMD)
        script, params = call.stdin.decode(errors="replace"), [call.args[0]]
    depth = parent.depth + 1
    child = _Shell(parent.proc, dict(call.env), params, is_pid1=call.is_pid1, depth=depth)
    child.cwd, child.errexit = parent.cwd, errexit
    return (yield from child.run_script(script))


@_program("hostname")
def _hostname(call: _Call) -> Steps:
    if any(not a.startswith("-") for a in call.args[1:]):
        return _exit_with(1, _err("hostname: sethostname: Operation not permitted\n"))
    return _exit_with(0, _out(call.shell.ctx.hostname + "\n"))


@_program("cat")
def _cat(call: _Call) -> Steps:
    sh, steps, code = call.shell, [], 0
    for arg in [a for a in call.args[1:] if a == "-" or not a.startswith("-")] or ["-"]:
        data = call.stdin if arg == "-" else sh.ctx.files.get(sh.path(arg))
        if arg != "-" and _listdir(sh.ctx, sh.path(arg)) is not None:
            steps.append(_err("cat: read error: Is a directory\n"))
        elif data is None:
            steps.append(_err(f"cat: can't open '{arg}': No such file or directory\n"))
        else:
            steps.append(_out(data))
            continue
        code = 1
    return _exit_with(code, *steps)


@_program("ls")
def _ls(call: _Call) -> Steps:
    """One name per line (ls output is not a terminal); options are ignored."""
    sh, steps, code = call.shell, [], 0
    targets = [a for a in call.args[1:] if not a.startswith("-")] or ["."]
    for target in targets:
        names = _listdir(sh.ctx, sh.path(target))
        if names is not None:
            header = f"{target}:\n" if len(targets) > 1 else ""
            steps.append(_out(header + "".join(f"{name}\n" for name in sorted(names))))
        elif sh.path(target) in sh.ctx.files:
            steps.append(_out(target + "\n"))
        else:
            steps.append(_err(f"ls: {target}: No such file or directory\n"))
            code = 1
    return _exit_with(code, *steps)


@_program("id")
def _id(call: _Call) -> Steps:
    ctx = call.shell.ctx
    flags = "".join(a[1:] for a in call.args[1:] if a.startswith("-"))
    group = "root" if ctx.gid == 0 else ctx.user if ctx.user and ctx.gid == ctx.uid else ""
    if "u" in flags or "g" in flags:
        number, name = (ctx.uid, ctx.user) if "u" in flags else (ctx.gid, group)
        return _exit_with(0, _out(f"{name if 'n' in flags and name else number}\n"))
    uid, gid = _id_name(ctx.uid, ctx.user), _id_name(ctx.gid, group)
    return _exit_with(0, _out(f"uid={uid} gid={gid} groups={gid}\n"))


def _id_name(number: int, name: str) -> str:
    return f"{number}({name})" if name else str(number)


@_program("whoami")
def _whoami(call: _Call) -> Steps:
    ctx = call.shell.ctx
    if not ctx.user:
        return _exit_with(1, _err(f"whoami: unknown uid {ctx.uid}\n"))
    return _exit_with(0, _out(ctx.user + "\n"))


@_program("pwd")
def _pwd(call: _Call) -> Steps:
    return _exit_with(0, _out(call.shell.cwd + "\n"))


@_program("date")
def _date(call: _Call) -> Steps:
    """Always UTC, as in a container without /etc/localtime; ``date +FORMAT`` works."""
    now = datetime.fromtimestamp(call.shell.ctx.clock(), UTC)
    fmt = next((a[1:] for a in call.args[1:] if a.startswith("+")), "%a %b %e %H:%M:%S %Z %Y")
    try:
        return _exit_with(0, _out(now.strftime(fmt) + "\n"))
    except ValueError:
        return _exit_with(1, _err(f"date: invalid format '{fmt}'\n"))


@_program("uname")
def _uname(call: _Call) -> Steps:
    fields = {"s": "Linux", "n": call.shell.ctx.hostname, "r": KERNEL_RELEASE}
    fields |= {"v": "#1 SMP crilab", "m": platform.machine() or "x86_64", "o": "GNU/Linux"}
    flags = "".join("a" if a == "--all" else a[1:] for a in call.args[1:])
    if bad := next((f for f in flags if f not in "asnrvmo"), None):
        return _exit_with(1, _err(f"uname: invalid option -- '{bad}'\n"))
    chosen = "snrvmo" if "a" in flags else flags or "s"
    return _exit_with(0, _out(" ".join(v for k, v in fields.items() if k in chosen) + "\n"))


@_program("docker-entrypoint.sh")
def _docker_entrypoint(call: _Call) -> Steps:
    """The official images' entrypoint: set up, then ``exec "$@"``."""
    if len(call.args) < 2:
        return 0
    if posixpath.basename(call.args[1]) == "nginx":
        yield _out("/docker-entrypoint.sh: Configuration complete; ready for start up\n")
    sh, args = call.shell, call.args[1:]
    return (yield from sh.run_command(args, call.env, stdin=call.stdin, is_pid1=call.is_pid1))


@_program("pause", sigterm_exit_code=0)
def _pause(call: _Call) -> Steps:
    """The sandbox's pause container: sleeps until a signal; exits 0 on SIGTERM."""
    yield Sleep(math.inf)
    return 0


_SERVERS = ("nginx", "httpd", "apache2", "redis-server", "memcached", "postgres", "mysqld")
_BANNERS = {
    "nginx": ("stderr", "[notice] 1#1: start worker processes\n"),
    "redis-server": ("stdout", "1:M * Ready to accept connections tcp\n"),
    "httpd": ("stderr", "[mpm_event:notice] AH00489: resuming normal operations\n"),
}


@_program(*_SERVERS, "mongod", "etcd", "coredns", "caddy", "haproxy", sigterm_exit_code=0)
def _server(call: _Call) -> Steps:
    """A well-known server: a startup line, then serving until stopped (SIGTERM: exit 0)."""
    stream, banner = _BANNERS.get(posixpath.basename(call.args[0]), ("stdout", ""))
    if banner:
        yield Output(stream, banner.encode())  # type: ignore[arg-type]
    yield Sleep(math.inf)
    return 0


@_program("top", sigterm_exit_code=143)
def _top(call: _Call) -> Steps:
    """busybox top: a screen every 5 s (``-n N``: N screens). SIGTERM: exit 143 (128+15)."""
    match = re.search(r"-[a-z]*n\s*([0-9]{1,6})", " ".join(call.args[1:]))
    rounds, shown = (int(match[1]) if match else None), 0
    while rounds is None or shown < rounds:
        if shown:
            yield Sleep(5.0)
        yield _out(_top_screen(call.shell.ctx))
        shown += 1
    return 0


def _top_screen(ctx: ProcessContext) -> str:
    cmdline = ctx.files.get("/proc/1/cmdline", b"top").replace(b"\0", b" ").strip()
    rows = [(1, cmdline.decode(errors="replace") or "top")] + [(ctx.pid, "top")] * (ctx.pid != 1)
    user = (ctx.user or str(ctx.uid))[:8]
    return (
        "Mem: 1523424K used, 6493840K free, 1012K shrd, 92136K buff, 1087512K cached\n"
        "CPU:   0% usr   0% sys   0% nic 100% idle   0% io   0% irq   0% sirq\n"
        f"Load average: 0.00 0.00 0.00 1/{len(rows)} {rows[-1][0]}\n"
        "  PID  PPID USER     STAT   VSZ %VSZ CPU %CPU COMMAND\n"
        + "".join(f"{pid:5d}     0 {user:<8} S     1600   0%   0   0% {cmd}\n" for pid, cmd in rows)
    )
