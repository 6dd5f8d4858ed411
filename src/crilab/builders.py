"""Small builders for CRI configs, so a notebook cell stays short.

They build the same messages the kubelet sends, with the fields a learner
cares about up front and sensible defaults for the rest. Everything they
return is a plain ``api_pb2`` message that can be edited further.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Mapping, Sequence

from .stubs import api_pb2

__all__ = [
    "NOTEBOOK_LABELS",
    "OWNER_LABEL",
    "container_config",
    "default_log_directory",
    "pod_config",
]

#: The label on every pod the notebook helpers make (``lab.pod_config``, the lifecycle
#: panel): ``lab.cleanup()`` removes those pods and never anyone else's, e.g. a real
#: node's kube-system pods.
OWNER_LABEL = "crilab.io/owner"
NOTEBOOK_LABELS: dict[str, str] = {OWNER_LABEL: "notebook"}


_log_lock = threading.Lock()
#: (process, temp dir) -> the log directory made there: a fork or a changed
#: ``tempfile.tempdir`` (tests point it at their own tmp) gets a directory of its own.
_log_dirs: dict[tuple[int, str], str] = {}


def default_log_directory() -> str:
    """This process's private directory for container logs, removed when it exits.

    The kubelet keeps pods' logs under /var/log/pods/...; a notebook's are scratch. One
    fresh 0700 directory per process (made on first use), so two kernels never share one,
    and nothing piles up in the temp directory once they have exited.
    """
    key = (os.getpid(), tempfile.gettempdir())
    with _log_lock:
        path = _log_dirs.get(key)
        if path is None or not os.path.isdir(path):
            path = _log_dirs[key] = tempfile.mkdtemp(prefix="crilab-logs-", dir=key[1])
            atexit.register(_remove_log_directory, key[0], path)
        return path


def _remove_log_directory(pid: int, path: str) -> None:
    if os.getpid() == pid:  # never a directory a parent process still uses
        shutil.rmtree(path, ignore_errors=True)


def pod_config(
    name: str,
    namespace: str = "default",
    *,
    uid: str | None = None,
    attempt: int = 0,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    hostname: str = "",
    log_directory: str | None = None,
    host_network: bool = False,
) -> api_pb2.PodSandboxConfig:
    """A ``PodSandboxConfig`` like the kubelet's for a pod ``namespace/name``.

    ``uid`` defaults to a fresh UUID, as the API server assigns one per pod.
    ``log_directory`` defaults to ``NAMESPACE_NAME_UID`` in ``default_log_directory()``
    (removed when this process exits): give your own to keep the logs.
    ``host_network=True`` is what a real containerd here needs (no CNI network).
    """
    uid = uid or str(uuid.uuid4())
    if not log_directory:
        # The kubelet's layout: /var/log/pods/<namespace>_<name>_<uid>/<container>/<attempt>.log
        log_directory = os.path.join(default_log_directory(), f"{namespace}_{name}_{uid}")
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(
            name=name, namespace=namespace, uid=uid, attempt=attempt
        ),
        hostname=hostname,
        log_directory=log_directory,
        labels=dict(labels or {}),
        annotations=dict(annotations or {}),
    )
    namespaces = config.linux.security_context.namespace_options
    namespaces.pid = api_pb2.CONTAINER  # the kubelet's default (no shareProcessNamespace)
    if host_network:
        namespaces.network = api_pb2.NODE
    return config


def container_config(
    name: str,
    image: str,
    command: Sequence[str] = (),
    args: Sequence[str] = (),
    *,
    attempt: int = 0,
    env: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    working_dir: str = "",
    log_path: str | None = None,
) -> api_pb2.ContainerConfig:
    """A ``ContainerConfig`` for container ``name`` running ``image``.

    ``command``/``args`` override the image's ENTRYPOINT/CMD as in a pod spec.
    The log goes to ``NAME/ATTEMPT.log`` under the pod's log directory, like
    the kubelet's layout.
    """
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name, attempt=attempt),
        image=api_pb2.ImageSpec(image=image),
        command=list(command),
        args=list(args),
        envs=[api_pb2.KeyValue(key=k, value=_env_value(v)) for k, v in (env or {}).items()],
        labels=dict(labels or {}),
        annotations=dict(annotations or {}),
        working_dir=working_dir,
        log_path=log_path or f"{name}/{attempt}.log",
    )
    # Its own PID namespace, as the kubelet asks by default: the command is PID 1, which
    # is why a shell ignores SIGTERM and StopContainer waits out the grace period.
    config.linux.security_context.namespace_options.pid = api_pb2.CONTAINER
    return config


def _env_value(value: str) -> object:
    """KeyValue.value's generated type (bytes in the reference contract, str upstream)."""
    field = api_pb2.KeyValue.DESCRIPTOR.fields_by_name["value"]
    return value.encode() if field.type == field.TYPE_BYTES else value
