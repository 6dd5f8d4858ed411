"""Generated gRPC stubs, made from ``proto/`` on first use and cached.

Every module and notebook gets its stubs the same way::

    from crilab.stubs import api_pb2, api_pb2_grpc
    from crilab.stubs import helloworld_pb2, helloworld_pb2_grpc

The first import runs ``grpc_tools.protoc`` on the ``.proto`` file and writes
``NAME_pb2.py``, ``NAME_pb2_grpc.py`` and ``NAME_pb2.pyi`` into a cache directory
whose name is a hash of the proto's bytes, the protoc/protobuf versions and the
version of crilab's own edit of the generated code, so an edited proto gets
fresh stubs and an unchanged one is never regenerated.
Stubs are never committed: the proto is the single source of truth.

Why a cache and not a build step: a learner may edit a proto in a notebook and
restart the kernel; the next import regenerates without any command.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

__all__ = [
    "ProtoChangedError",
    "ProtoError",
    "cache_dir",
    "generate",
    "load",
    "proto_dir",
    "proto_names",
    "remove_stale_temporaries",
    "write_stubs",
]

_SUFFIXES = ("_pb2", "_pb2_grpc")
# Bump when the rewrite of the generated code (``_IMPORT`` below) changes: it is part
# of the cache key, so stubs written by an older crilab are never reused.
_REWRITE_VERSION = "1"
# A generation's temporary folder older than this was left by a process that died
# mid-way (protoc takes well under a second): it is safe to remove.
_STALE_TEMP_SECONDS = 600
_lock = threading.RLock()
# proto name -> key of the stubs this process imported (protobuf's descriptor
# pool cannot take a changed file twice, so the first key wins until restart).
_loaded_keys: dict[str, str] = {}


class _MessageOnly:
    """An error whose message says it all: IPython shows the message, not a traceback.

    IPython calls ``_render_traceback_`` when an exception has it; a learner who
    broke a proto sees protoc's ``file:line: message`` instead of frames of crilab.
    """

    def _render_traceback_(self) -> list[str]:
        head, *rest = str(self).splitlines() or [""]
        return [f"{type(self).__name__}: {head}", *rest]


class ProtoError(_MessageOnly, RuntimeError):
    """protoc rejected a .proto file; the message is protoc's, with file and line."""


class ProtoChangedError(_MessageOnly, RuntimeError):
    """The proto changed after this process imported its stubs."""


def proto_dir() -> Path:
    """Where the ``.proto`` files are: ``$CRILAB_PROTO_DIR``, the wheel, or the repository."""
    override = os.environ.get("CRILAB_PROTO_DIR")
    if override:
        if not os.path.isdir(override):
            raise FileNotFoundError(
                f"CRILAB_PROTO_DIR={override} is not a directory: point it at a folder of "
                ".proto files (or unset it to use crilab's own)"
            )
        return Path(override)
    here = Path(__file__).resolve().parent
    for candidate in (here / "proto", here.parent.parent / "proto"):
        if (candidate / "api.proto").is_file():
            return candidate
    raise FileNotFoundError(
        "crilab cannot find its .proto files (looked in the installed package and the "
        "repository's proto/ folder); reinstall crilab or set CRILAB_PROTO_DIR"
    )


def proto_names() -> list[str]:
    """The protos crilab knows, by stem (``api``, ``helloworld``)."""
    return sorted(p.stem for p in proto_dir().glob("*.proto"))


def cache_dir() -> Path:
    """``$CRILAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/crilab``, else ``~/.cache/crilab``."""
    override = os.environ.get("CRILAB_CACHE_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "crilab"


@functools.cache
def _toolchain_version() -> str:
    import google.protobuf
    from grpc_tools import grpc_version

    return f"grpcio-tools={grpc_version.VERSION};protobuf={google.protobuf.__version__}"


@dataclass(frozen=True)
class _Source:
    name: str
    path: Path
    key: str


def _source(name: str) -> _Source:
    path = proto_dir() / f"{name}.proto"
    if not path.is_file():
        known = ", ".join(proto_names()) or "none"
        raise ModuleNotFoundError(f"no proto named {name!r} in {path.parent} (known: {known})")
    digest = hashlib.sha256(path.read_bytes())
    digest.update(f"{_toolchain_version()};rewrite={_REWRITE_VERSION}".encode())
    return _Source(name, path, digest.hexdigest()[:16])


def _run_protoc(src: Path, out: Path) -> None:
    """Run protoc in a child process so its errors (file:line: message) can be captured."""
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{src.parent}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        src.name,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=src.parent, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise ProtoError(f"protoc could not compile {src}:\n{detail}")


def write_stubs(name: str, out: Path | str) -> list[Path]:
    """Write plain stubs for ``name`` into ``out`` (``import api_pb2`` works from there)."""
    src = _source(name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _run_protoc(src.path, out)
    return sorted(out.glob(f"{name}_pb2*"))


_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)
_TEMP_NAME = re.compile(r"\.[\w-]+-[a-z0-9_]{8}")  # tempfile.mkdtemp(prefix=".NAME-")


def generate(name: str) -> Path:
    """Return the cache directory holding ``name``'s stubs, generating them if needed.

    Generation happens in a private temporary directory beside the final one,
    which is then renamed into place: 30 processes starting at once never see a
    half-written file, and the losers of the race simply use the winner's copy.
    """
    src = _source(name)
    root = cache_dir()
    final = root / f"{name}-{src.key}"
    if (final / f"{name}_pb2_grpc.py").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        _run_protoc(src.path, tmp)
        grpc_file = tmp / f"{name}_pb2_grpc.py"
        # The generated grpc module imports its messages as a top-level module;
        # point it at crilab.stubs so nothing is added to sys.path.
        grpc_file.write_text(
            _IMPORT.sub(r"from crilab.stubs import \1 as \2", grpc_file.read_text())
        )
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / f"{name}_pb2_grpc.py").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def remove_stale_temporaries(root: Path | None = None) -> list[Path]:
    """Remove generation folders (``.NAME-*``) that a crashed process left in the cache.

    Only folders named like ``generate``'s temporaries and untouched for
    ``_STALE_TEMP_SECONDS`` go: a generation under way in another process is young,
    and finished stubs (``NAME-KEY``) never start with a dot. Returns what was removed.
    """
    root = cache_dir() if root is None else root
    cutoff = time.time() - _STALE_TEMP_SECONDS
    removed: list[Path] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        if not _TEMP_NAME.fullmatch(entry.name):
            continue
        try:
            # a folder, not a link to one, and old: only then is it ours and abandoned
            if not entry.is_dir(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_mtime > cutoff:
                continue
        except OSError:
            continue  # gone meanwhile: another process cleaned it or renamed it
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    return removed


def load(module: str) -> ModuleType:
    """Import ``NAME_pb2`` or ``NAME_pb2_grpc`` from the cache (generating it if needed)."""
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if module.endswith(suffix):
            name = module[: -len(suffix)]
            break
    else:
        raise AttributeError(f"module 'crilab.stubs' has no attribute {module!r}")
    qualified = f"{__name__}.{module}"
    with _lock:
        src = _source(name)
        seen = _loaded_keys.get(name)
        if seen is not None and seen != src.key:
            raise ProtoChangedError(
                f"{name}.proto changed after this process imported its stubs. protobuf "
                "cannot load a changed .proto twice in one process: restart the kernel "
                "(Kernel > Restart) or start a new Python process to use the new version."
            )
        if qualified in sys.modules:
            return sys.modules[qualified]
        directory = generate(name)
        spec = importlib.util.spec_from_file_location(qualified, directory / f"{module}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[qualified]
            raise
        _loaded_keys[name] = src.key
        return mod


def __getattr__(attr: str) -> ModuleType:
    if attr.startswith("__"):
        raise AttributeError(attr)
    return load(attr)
