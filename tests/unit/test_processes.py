"""Unit tests of the simulated processes: the tiny shell, run_sync and the CRI log writer.

Time is virtual: run_sync gets a fake ``sleep`` that only adds up the seconds.
"""

from __future__ import annotations

import itertools
import math
import re
import shlex
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crilab.runtime.errors import CRIError, DeadlineExceeded, FailedPrecondition, InvalidArgument
from crilab.runtime.processes import (
    BUSY_SLICE,
    MAX_COMMAND_BYTES,
    CRILogWriter,
    ExecResult,
    Killed,
    Output,
    Process,
    ProcessContext,
    Sleep,
    default_files,
    exit_code_of,
    format_timestamp,
    missing_program,
    parse_cri_log,
    program_exists,
    resolve_argv,
    run_sync,
    spawn,
)
from crilab.runtime.scheduler import MAX_DELAY as MAX_WAIT

OS_RELEASE = 'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.20.0\n'
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z")


class FakeSleep:
    """Virtual time: records each sleep instead of waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)

    @property
    def total(self) -> float:
        return sum(self.calls)


def make_ctx(**overrides: object) -> ProcessContext:
    ctx = ProcessContext(
        env={"PATH": "/usr/bin:/bin", "HOME": "/root", "NAME": "world"},
        hostname="web-1",
        files=default_files("web-1", OS_RELEASE, ["sh"], ip="10.0.0.7"),
        clock=lambda: 1767323045.0,  # 2026-01-02T03:04:05Z
    )
    for key, value in overrides.items():
        setattr(ctx, key, value)
    return ctx


def run(command: str | list[str], timeout: float | None = None, **kw: object) -> ExecResult:
    """Run a command line (split like a shell would) to completion in virtual time."""
    argv = shlex.split(command) if isinstance(command, str) else command
    return run_sync(spawn(argv, make_ctx()), timeout, sleep=FakeSleep(), **kw)  # type: ignore[arg-type]


def sh(script: str, timeout: float | None = None) -> ExecResult:
    return run(["sh", "-c", script], timeout)


def take(process: Process, n: int) -> list[Output | Sleep]:
    return list(itertools.islice(process.steps(), n))


# --------------------------------------------------------------------------- echo, printf, quoting


@pytest.mark.parametrize(
    ("command", "stdout"),
    [
        ("echo hi", b"hi\n"),
        ("/bin/echo hi there", b"hi there\n"),
        ("echo -n hi", b"hi"),
        ("echo -e 'a\\tb\\nc'", b"a\tb\nc\n"),
        ("echo 'a\\tb'", b"a\\tb\n"),  # no -e: escapes stay
        ("echo -e 'stop\\chere'", b"stop"),
        ("echo '  spaced  out  '", b"  spaced  out  \n"),
        ("echo -", b"-\n"),
        ("printf abc", b"abc"),
        ("printf '%s=%d\\n' a 1 b 2", b"a=1\nb=2\n"),  # the format is reused
        ("printf '%5.2f|%x|%c|%%|%-3s|\\n' 3.14159 255 hello x", b" 3.14|ff|h|%|x  |\n"),
        ("printf '%d\\n' 0x10 010 \"'A\"", b"16\n8\n65\n"),
        ("printf '%s\\n'", b"\n"),
    ],
)
def test_echo_printf(command: str, stdout: bytes) -> None:
    assert run(command) == ExecResult(stdout, b"", 0)


def test_printf_bad_number_and_format() -> None:
    result = run("printf '%d|' abc")
    assert (result.stdout, result.exit_code) == (b"0|", 1)
    assert b"invalid number 'abc'" in result.stderr
    assert run("printf '%z'").exit_code == 1
    assert run("printf").exit_code == 1


@pytest.mark.parametrize(
    ("script", "stdout"),
    [
        ("echo \"hello $NAME\" '$NAME' ${NAME}!", b"hello world $NAME world!\n"),
        ('echo "a\\$b\\\\c" a\\ b', b"a$b\\c a b\n"),
        ("X='a b  c'; for i in $X; do echo [$i]; done; echo \"$X\"", b"[a]\n[b]\n[c]\na b  c\n"),
        ("echo ${UNSET:-default} ${NAME:-x} ${UNSET-d2} [$UNSET]", b"default world d2 []\n"),
        ("E=; echo [${E-unused}] [${E:-used}]", b"[] [used]\n"),
        ("echo $$ $HOSTNAME", b"1 web-1\n"),
        ("false; echo $?; true; echo $?", b"1\n0\n"),
        ("A=1 B=two; echo $A$B", b"1two\n"),
        ("FOO=bar sh -c 'echo $FOO'; echo [$FOO]", b"bar\n[]\n"),  # only for that command
        ("export GREETING=hi; sh -c 'echo $GREETING'", b"hi\n"),
        ("echo a\necho b", b"a\nb\n"),
        ("echo one; # a comment\necho two", b"one\ntwo\n"),
        ("echo $0 $# $1", b"sh 0\n"),
        ("for x in a 'b c'; do echo \"<$x>\"; done", b"<a>\n<b c>\n"),
        ("for x in\ndo echo never; done; echo after", b"after\n"),
    ],
)
def test_expansion_and_quoting(script: str, stdout: bytes) -> None:
    assert sh(script) == ExecResult(stdout, b"", 0)


def test_positional_parameters() -> None:
    result = run(["sh", "-c", 'echo "$0:$1:$2:$#"', "me", "one", "two"])
    assert result.stdout == b"me:one:two:2\n"


def test_stderr_and_exit_code() -> None:
    assert sh("echo err >&2; exit 3") == ExecResult(b"", b"err\n", 3)
    assert sh("echo err 1>&2") == ExecResult(b"", b"err\n", 0)
    assert sh("echo out 2>&1") == ExecResult(b"out\n", b"", 0)
    assert sh("echo gone > /dev/null; echo also >/dev/null 2>&1; echo kept") == ExecResult(
        b"kept\n", b"", 0
    )
    assert sh("cat /nope 2>/dev/null; echo $?") == ExecResult(b"1\n", b"", 0)
    assert sh("exit 300").exit_code == 300 & 0xFF
    assert sh("exit nope").exit_code == 2


@pytest.mark.parametrize(
    ("script", "stdout", "code"),
    [
        ("true && echo yes", b"yes\n", 0),
        ("false && echo yes", b"", 1),
        ("false || echo fallback", b"fallback\n", 0),
        ("true || echo no", b"", 0),
        ("false && echo no || echo yes", b"yes\n", 0),
        ("true && false || echo recovered", b"recovered\n", 0),
        ("true &&\n echo continued", b"continued\n", 0),
    ],
)
def test_and_or(script: str, stdout: bytes, code: int) -> None:
    assert sh(script) == ExecResult(stdout, b"", code)


def test_set_e_stops_at_first_failure_outside_conditions() -> None:
    assert sh("set -e; echo a; false; echo b") == ExecResult(b"a\n", b"", 1)
    assert sh("set -e; false || echo ok; false && echo no; echo end").stdout == b"ok\nend\n"
    assert run(["sh", "-ec", "false; echo b"]) == ExecResult(b"", b"", 1)


def test_redirection_to_simulated_files() -> None:
    ctx = make_ctx()
    script = (
        "echo hi > /tmp/x; echo more >> /tmp/x; cat /tmp/x; for i in 1 2; do echo $i; done > /tmp/y"
    )
    assert run_sync(spawn(["sh", "-c", script], ctx), None, FakeSleep()).stdout == b"hi\nmore\n"
    assert ctx.files["/tmp/y"] == b"1\n2\n"  # the next exec in this container sees it
    assert sh("echo x > /etc").stderr == b"sh: can't create /etc: Is a directory\n"


def test_syntax_errors_exit_2() -> None:
    assert sh("while true; do") == ExecResult(
        b"", b'sh: syntax error: unexpected end of file (expecting "done")\n', 2
    )
    assert sh("echo 'open").stderr == b"sh: syntax error: unterminated quoted string\n"
    assert sh("; echo").stderr == b'sh: syntax error: unexpected ";"\n'
    assert sh("done").exit_code == 2
    for unsupported in ("echo $(date)", "echo `date`", "if true; then echo; fi", "(echo)"):
        result = sh(unsupported)
        assert result.exit_code == 2 and b"not supported" in result.stderr, unsupported


def test_pipe_is_an_error_message() -> None:
    result = sh("echo a | cat")
    assert result.exit_code == 2 and b"pipes" in result.stderr


# --------------------------------------------------------------------------- programs


def test_unknown_command_is_127() -> None:
    assert run("frobnicate --now") == ExecResult(b"", b"sh: frobnicate: not found\n", 127)
    assert sh("nope; echo $?") == ExecResult(b"127\n", b"sh: nope: not found\n", 0)
    assert run("/etc/echo hi").exit_code == 127  # only bin directories hold programs
    assert run("env nope").stderr == b"env: can't execute 'nope': No such file or directory\n"
    assert run("exit 3").exit_code == 127  # a builtin, not an executable
    assert program_exists("/usr/sbin/nginx") and not program_exists("frobnicate")


def test_files_from_the_context() -> None:
    assert run("cat /etc/hostname") == ExecResult(b"web-1\n", b"", 0)
    assert run("hostname").stdout == b"web-1\n"
    assert b"10.0.0.7\tweb-1\n" in run("cat /etc/hosts").stdout
    assert run("cat /etc/os-release").stdout == OS_RELEASE.encode()
    assert run("cat /proc/1/cmdline").stdout == b"sh\0"
    assert run("cat /nope") == ExecResult(
        b"", b"cat: can't open '/nope': No such file or directory\n", 1
    )
    assert run("cat /etc").exit_code == 1
    assert b"os-release\npasswd\nresolv.conf\n" in run("ls /etc").stdout
    assert b"etc\n" in run("ls /").stdout
    assert run("ls /nope").exit_code == 1
    assert sh("cd /etc && cat hostname && pwd").stdout == b"web-1\n/etc\n"
    assert "/etc/os-release" not in default_files("h", "")  # busybox has none


def test_identity_and_system_programs() -> None:
    assert run("id").stdout == b"uid=0(root) gid=0(root) groups=0(root)\n"
    assert run("whoami").stdout == b"root\n"
    assert run("pwd").stdout == b"/\n"
    assert run("date").stdout == b"Fri Jan  2 03:04:05 UTC 2026\n"
    assert run("date +%Y-%m-%d").stdout == b"2026-01-02\n"
    assert run("uname").stdout == b"Linux\n"
    assert run("uname -a").stdout.startswith(b"Linux web-1 ")
    assert run("uname -q").exit_code == 1
    assert run("env").stdout == b"PATH=/usr/bin:/bin\nHOME=/root\nNAME=world\n"
    assert run("true").exit_code == 0 and run("false").exit_code == 1
    nobody = make_ctx(user="", uid=1000, gid=1000)
    assert run_sync(spawn(["id"], nobody), None).stdout == b"uid=1000 gid=1000 groups=1000\n"
    assert run_sync(spawn(["whoami"], nobody), None).exit_code == 1


@pytest.mark.parametrize(
    ("image_user", "user", "uid", "gid"),
    [
        ("", "root", 0, 0),
        ("root", "root", 0, 0),
        ("0", "root", 0, 0),
        ("nobody", "nobody", 65534, 65534),
        ("1000", "", 1000, 1000),
        ("1000:2000", "", 1000, 2000),
    ],
)
def test_context_accepts_an_image_user(image_user: str, user: str, uid: int, gid: int) -> None:
    ctx = ProcessContext(files=default_files("h", ""), user=image_user)
    assert (ctx.user, ctx.uid, ctx.gid) == (user, uid, gid)


def test_exit_code_of() -> None:
    process = spawn(["sh", "-c", "exit 4"], make_ctx())
    with pytest.raises(StopIteration) as stop:
        while True:
            next(process.steps())
    assert exit_code_of(process, stop.value) == 4 == stop.value.value


def test_plain_shell_exits_at_once() -> None:
    process = spawn(["sh"], make_ctx())
    assert take(process, 10) == [] and process.exit_code == 0


def test_top_prints_screens() -> None:
    result = run("top -b -n 2")
    assert result.exit_code == 0 and result.stdout.count(b"PID  PPID") == 2


# --------------------------------------------------------------------------- laziness, sleeping


def test_infinite_loop_is_lazy() -> None:
    process = spawn(["sh", "-c", "while true; do echo tick; sleep 1; done"], make_ctx())
    assert take(process, 6) == [Output("stdout", b"tick\n"), Sleep(1.0)] * 3
    assert process.exit_code is None


def test_busy_loop_still_yields_time() -> None:
    process = spawn(["sh", "-c", "while :; do :; done"], make_ctx())
    assert take(process, 3) == [Sleep(BUSY_SLICE)] * 3


@pytest.mark.parametrize(
    ("argv", "seconds"),
    [
        ("sleep 2", 2.0),
        ("sleep 1.5", 1.5),
        ("sleep 2m", 120.0),
        ("sleep 1 1", 2.0),
        ("sleep infinity", math.inf),
        ("/bin/sleep .5", 0.5),
    ],
)
def test_sleep_steps(argv: str, seconds: float) -> None:
    process = spawn(shlex.split(argv), make_ctx())
    assert list(process.steps()) == [Sleep(seconds)]
    assert process.exit_code == 0


def test_sleep_bad_argument() -> None:
    assert run("sleep soon") == ExecResult(b"", b"sleep: invalid number 'soon'\n", 1)


def test_run_sync_sleeps_in_virtual_time() -> None:
    fake = FakeSleep()
    result = run_sync(spawn(["sh", "-c", "sleep 1; echo done"], make_ctx()), 5, sleep=fake)
    assert result == ExecResult(b"done\n", b"", 0) and fake.calls == [1.0]


def test_timeout_raises_deadline_exceeded_after_sleeping_up_to_it() -> None:
    fake = FakeSleep()
    with pytest.raises(DeadlineExceeded, match=r"command 'sleep 10' timed out after 2s"):
        run_sync(spawn(["sleep", "10"], make_ctx()), 2, sleep=fake)
    assert fake.total == 2


def test_without_timeout_forever_is_capped() -> None:
    fake = FakeSleep()
    with pytest.raises(DeadlineExceeded, match="never returns"):
        run_sync(spawn(["sleep", "infinity"], make_ctx()), 0, sleep=fake, max_seconds=60)
    assert fake.total == 60


def test_busy_loop_hits_the_timeout() -> None:
    with pytest.raises(DeadlineExceeded):
        sh("while true; do true; done", timeout=0.5)


def test_output_cap_truncates_and_kills() -> None:
    result = run(["sh", "-c", "while true; do echo xxxx; done"], max_output=1000)
    assert result.exit_code == 137 and len(result.stdout) == 1000
    assert b"truncated" in result.stderr


# --------------------------------------------------------------------------- SIGTERM handling


@pytest.mark.parametrize(
    ("argv", "sigterm_exit_code"),
    [
        (["nginx", "-g", "daemon off;"], 0),
        (["/usr/sbin/nginx"], 0),
        (["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"], 0),
        (["redis-server"], 0),
        (["/pause"], 0),
        (["top"], 143),
        (["sleep", "infinity"], None),  # PID 1 has no default signal handlers
        (["sh", "-c", "sleep infinity"], None),
        (["sh", "-c", "nginx"], 0),  # a lone command is exec'd by the shell
        (["sh", "-c", "echo start; exec nginx"], 0),
        (["sh", "-c", "echo start; nginx"], None),  # the shell stays PID 1
        (["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"], 0),
        (["sh", "-c", "trap 'echo bye; exit' TERM; sleep infinity"], 143),
        (["sh", "-c", "trap 'echo hi' TERM; sleep infinity"], None),
    ],
)
def test_sigterm_handling(argv: list[str], sigterm_exit_code: int | None) -> None:
    process = spawn(argv, make_ctx())
    take(process, 3)  # the runtime pulls steps as soon as it starts the container
    assert process.sigterm_exit_code == sigterm_exit_code
    assert process.handles_sigterm is (sigterm_exit_code is not None)


def test_servers_run_until_stopped() -> None:
    steps = take(spawn(["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"], make_ctx()), 5)
    assert steps[-1] == Sleep(math.inf)
    assert steps[0] == Output(
        "stdout", b"/docker-entrypoint.sh: Configuration complete; ready for start up\n"
    )


# --------------------------------------------------------------------------- argv resolution


@pytest.mark.parametrize(
    ("entrypoint", "cmd", "command", "args", "argv"),
    [
        (["/docker-entrypoint.sh"], ["nginx"], [], [], ["/docker-entrypoint.sh", "nginx"]),
        (["/docker-entrypoint.sh"], ["nginx"], ["sleep"], ["5"], ["sleep", "5"]),
        (["/docker-entrypoint.sh"], ["nginx"], ["top"], [], ["top"]),  # image CMD ignored
        (["/docker-entrypoint.sh"], ["nginx"], [], ["redis"], ["/docker-entrypoint.sh", "redis"]),
        ([], ["sh"], [], [], ["sh"]),
        ([], ["sh"], [], ["echo", "hi"], ["echo", "hi"]),
        ([""], ["sh"], [], [], ["sh"]),  # ENTRYPOINT [""] resets it
        (None, None, ["echo"], None, ["echo"]),
    ],
)
def test_resolve_argv(
    entrypoint: list[str] | None,
    cmd: list[str] | None,
    command: list[str] | None,
    args: list[str] | None,
    argv: list[str],
) -> None:
    assert resolve_argv(entrypoint, cmd, command, args) == argv


def test_resolve_argv_without_any_command() -> None:
    with pytest.raises(InvalidArgument, match=r"no command.*set command in the container config"):
        resolve_argv([], [], [], [])


def test_huge_waits_are_capped_and_a_killed_exec_keeps_its_output() -> None:
    slept = FakeSleep()
    with pytest.raises(DeadlineExceeded):  # an int64 timeout: no wait may overflow
        run_sync(spawn(["sleep", "infinity"], make_ctx()), 2**63 - 1, sleep=slept)
    assert slept.calls == [MAX_WAIT]

    def killed(seconds: float) -> None:  # the container went during the sleep
        raise Killed()

    process = spawn(["sh", "-c", "echo before; sleep 4; echo after"], make_ctx())
    result = run_sync(process, 30, sleep=killed)
    assert result == ExecResult(b"before\n", b"", 137)


def test_long_work_looks_at_check_while_parsing_and_looping() -> None:
    process = spawn(["sh", "-c", "echo a;" * 20_000], make_ctx())
    looks = []

    def check() -> None:
        looks.append(1)
        raise Killed()

    process.check = check
    with pytest.raises(Killed):
        next(process.steps())  # parsing the script, before any step: it looked, and stopped
    assert looks == [1]
    busy = spawn(["sh", "-c", "while true; do :; done"], make_ctx())
    busy.check = check
    with pytest.raises(Killed):
        take(busy, 5)  # a busy loop looks too, between its CPU slices


def test_command_size_is_capped() -> None:
    spawn(["sh", "-c", "x" * (MAX_COMMAND_BYTES - 100)], make_ctx())
    with pytest.raises(InvalidArgument, match=f"limit of {MAX_COMMAND_BYTES} bytes"):
        spawn(["sh", "-c", "echo a;" * 200_000], make_ctx())
    with pytest.raises(InvalidArgument, match="bytes long"):  # counted in UTF-8 bytes
        spawn(["echo", "😀" * (MAX_COMMAND_BYTES // 3)], make_ctx())


def test_a_long_word_is_lexed_whole() -> None:
    word = "x" * 500_000
    assert sh(f"echo {word}") == ExecResult(word.encode() + b"\n", b"", 0)
    assert sh(f'echo "{word}"2>&1') == ExecResult(word.encode() + b"2\n", b"", 0)  # not an fd
    assert sh("echo a2>&1 2>/dev/null") == ExecResult(b"a2\n", b"", 0)


def test_missing_program_says_what_runc_says() -> None:
    assert missing_program(["sleep", "1"]) is None
    assert missing_program(["/bin/sh", "-c", "nope"]) is None  # sh exists: nope fails later
    assert missing_program(["nosuch"]) == 'exec: "nosuch": executable file not found in $PATH'
    assert missing_program(["/bin/nosuch"]) == (
        'exec: "/bin/nosuch": stat /bin/nosuch: no such file or directory'
    )
    assert missing_program(["exit", "3"]) is not None  # a builtin, not a file


def test_home_comes_from_passwd_when_unset() -> None:
    ctx = ProcessContext(env={}, files=default_files("h", ""))
    assert run_sync(spawn(["sh", "-c", "echo $HOME"], ctx), 5, sleep=FakeSleep()).stdout == (
        b"/root\n"
    )
    nobody = ProcessContext(env={}, files=default_files("h", ""), user="nobody")
    assert nobody.env["HOME"] == "/"
    unknown = ProcessContext(env={}, files=default_files("h", ""), user="1234")
    assert unknown.env["HOME"] == "/"
    kept = ProcessContext(env={"HOME": "/srv"}, files=default_files("h", ""))
    assert kept.env["HOME"] == "/srv"


def test_spawn_empty_argv() -> None:
    with pytest.raises(InvalidArgument):
        spawn([], make_ctx())


# --------------------------------------------------------------------------- CRI log writer


def test_log_format_full_and_partial_lines(tmp_path) -> None:
    path = tmp_path / "pods" / "ctr" / "0.log"
    writer = CRILogWriter(path)
    assert path.read_bytes() == b""  # `crictl logs` works before any output
    writer.write("stdout", b"hello\nworld\n", when_ns=1767323045_123456789)
    writer.write("stderr", b"abc")
    writer.write("stdout", b"\n")
    writer.close()
    entries = parse_cri_log(path.read_text())
    assert [e[1:] for e in entries] == [
        ("stdout", "F", "hello"),
        ("stdout", "F", "world"),
        ("stderr", "P", "abc"),
        ("stdout", "F", ""),
    ]
    assert entries[0][0] == "2026-01-02T03:04:05.123456789Z"
    assert all(TIMESTAMP.fullmatch(e[0]) for e in entries)
    assert path.read_text().splitlines()[0] == "2026-01-02T03:04:05.123456789Z stdout F hello"


def test_timestamp_always_has_nine_digits() -> None:
    assert format_timestamp(1767323045_000000000) == "2026-01-02T03:04:05.000000000Z"
    assert format_timestamp(5) == "1970-01-01T00:00:00.000000005Z"


def test_long_lines_split_into_partial_chunks(tmp_path) -> None:
    with CRILogWriter(tmp_path / "0.log") as writer:
        writer.write("stdout", b"x" * 40_000 + b"\n")
    tags = [e[2] for e in parse_cri_log((tmp_path / "0.log").read_bytes())]
    assert tags == ["P", "P", "F"]


def test_rotation_bounds_the_log(tmp_path) -> None:
    path = tmp_path / "0.log"
    writer = CRILogWriter(path, max_bytes=1000)
    for i in range(200):
        writer.write("stdout", f"line {i}\n".encode())
    writer.close()
    rotated = tmp_path / "0.log.1"
    assert path.stat().st_size <= 1000 and rotated.stat().st_size <= 1000
    assert parse_cri_log(path.read_text())[-1][3] == "line 199"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.log", "0.log.1"]


def test_reopen_after_the_kubelet_moved_the_file(tmp_path) -> None:
    path = tmp_path / "0.log"
    writer = CRILogWriter(path)
    writer.write("stdout", b"before\n")
    path.rename(tmp_path / "0.log.20260102")
    writer.reopen()
    writer.write("stdout", b"after\n")
    writer.close()
    assert [e[3] for e in parse_cri_log(path.read_text())] == ["after"]
    assert b"before" in (tmp_path / "0.log.20260102").read_bytes()


def test_a_failing_rotation_keeps_the_log_growing(tmp_path, caplog) -> None:
    path = tmp_path / "0.log"
    (tmp_path / "0.log.1").mkdir()  # the rotated name is taken by a directory
    writer = CRILogWriter(path, max_bytes=1000)
    for i in range(200):  # ~9 KB: the writer must keep going past max_bytes, not raise
        writer.write("stdout", f"line {i}\n".encode())
    writer.close()
    assert not writer.rotating
    assert "cannot rotate" in writer.error and "0.log.1" in writer.error
    assert [e[3] for e in parse_cri_log(path.read_text())][-1] == "line 199"
    assert path.stat().st_size > 1000
    assert sum("cannot rotate" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_a_failed_reopen_keeps_the_file_in_use(tmp_path) -> None:
    logs = tmp_path / "logs"
    path = logs / "0.log"
    writer = CRILogWriter(path)
    writer.write("stdout", b"before\n")
    path.rename(tmp_path / "moved.log")
    logs.rmdir()
    logs.write_text("")  # the directory is now a file: the new log cannot be opened
    with pytest.raises(OSError):
        writer.reopen()
    writer.write("stdout", b"still\n")  # no exception: the old file is still written
    writer.close()
    assert [e[3] for e in parse_cri_log((tmp_path / "moved.log").read_text())] == [
        "before",
        "still",
    ]


def test_concurrent_writers_never_interleave_lines(tmp_path) -> None:
    path = tmp_path / "0.log"
    with CRILogWriter(path) as writer:

        def chatter(stream: str) -> None:
            for i in range(200):
                writer.write(stream, f"{stream} {i} ".encode() * 20 + b"\n")  # type: ignore[arg-type]

        threads = [threading.Thread(target=chatter, args=(s,)) for s in ("stdout", "stderr") * 2]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    entries = parse_cri_log(path.read_text())
    assert len(entries) == 800
    assert all(e[3].startswith(e[1]) and e[2] == "F" for e in entries)


def test_working_dir_is_a_directory() -> None:
    ctx = make_ctx(working_dir="/app/")
    result = run_sync(spawn(["sh", "-c", "pwd; ls; ls /app"], ctx), None)
    assert result == ExecResult(b"/app\n", b"", 0)


def test_write_after_close_and_bad_stream(tmp_path) -> None:
    writer = CRILogWriter(tmp_path / "0.log")
    with pytest.raises(InvalidArgument):
        writer.write("stdin", b"x")  # type: ignore[arg-type]
    writer.close()
    with pytest.raises(FailedPrecondition):
        writer.write("stdout", b"x")


def test_parse_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse_cri_log("2026-01-02T03:04:05.000000000Z stdout F ok\nnot a log line\n")


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.binary(max_size=200), max_size=10))
def test_log_round_trip(tmp_path, chunks: list[bytes]) -> None:
    """Joining P chunks and ending F lines with newline rebuilds the written bytes."""
    path = tmp_path / "round.log"
    path.unlink(missing_ok=True)
    with CRILogWriter(path) as writer:
        for chunk in chunks:
            writer.write("stdout", chunk)
    rebuilt = b"".join(
        text.encode("utf-8", "surrogateescape") + (b"\n" if tag == "F" else b"")
        for _, _, tag, text in parse_cri_log(path.read_bytes().decode("utf-8", "surrogateescape"))
    )
    assert rebuilt == b"".join(chunks)


# --------------------------------------------------------------------------- robustness


SHELL_TOKENS = [
    "echo", "printf", "sleep", "cat", "ls", "exit", "true", "false", ":", "sh", "-c", "env",
    "while", "for", "in", "do", "done", "x", "1", "0", "-1", "infinity", "%d", "%s", "%99999d",
    ";", "&&", "||", "|", "&", "\n", ">", ">>", "2>&1", ">&2", "<", "/dev/null", "/tmp/f",
    "/etc/hostname", "$X", "${X}", "${X:-y}", "${", "$?", "$$", "'", '"', "\\", "X=1",
    "X=$X$X", "#", "(", ")", "`", "$(", "set", "-e", "export", "trap", "TERM", "exec", "cd",
]  # fmt: skip
ALLOWED = (CRIError,)


def pull(argv: list[str], n: int = 50) -> None:
    try:
        process = spawn(argv, make_ctx())
    except ALLOWED:
        return
    for step in itertools.islice(process.steps(), n):
        assert isinstance(step, Output | Sleep)
        if isinstance(step, Sleep):
            assert step.seconds > 0


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=80))
def test_random_argv_never_crashes(text: str) -> None:
    try:
        argv = shlex.split(text)
    except ValueError:  # unbalanced quotes: shlex's problem, not ours
        return
    pull(argv)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=120))
def test_random_script_never_crashes(text: str) -> None:
    pull(["sh", "-c", text])


@settings(max_examples=300, deadline=None)
@given(tokens=st.lists(st.sampled_from(SHELL_TOKENS), max_size=25))
def test_shell_like_token_soup_never_crashes(tokens: list[str]) -> None:
    pull(["sh", "-c", " ".join(tokens)])
    pull(tokens or ["true"])
