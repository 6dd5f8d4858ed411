"""Deterministic, moving resource figures for simulated containers and pods.

No process exists, so the numbers are made up, but in a way a learner can
reason about: each container gets a steady CPU rate and a base memory size
derived from its ID (same ID, same figures), CPU time grows while it runs and
memory wanders slowly around its base. Exited containers report zero usage.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping

from ..stubs import api_pb2
from .state import RUNNING, Container, Pod, RuntimeState

MiB = 1024 * 1024


def _unit(ident: str, salt: str) -> float:
    """A stable number in [0, 1) from an ID."""
    digest = hashlib.sha256(f"{salt}:{ident}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _labels_match(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _container_stats(ctr: Container, now: int) -> api_pb2.ContainerStats:
    out = api_pb2.ContainerStats()
    attrs = out.attributes
    attrs.id = ctr.id
    attrs.metadata.CopyFrom(ctr.item.metadata)
    attrs.labels.update(ctr.item.labels)
    attrs.annotations.update(ctr.item.annotations)
    running = ctr.item.state == RUNNING
    rate = 0.005 + 0.2 * _unit(ctr.id, "cpu")  # cores
    base = (8 + 120 * _unit(ctr.id, "mem")) * MiB
    started = ctr.status.started_at
    end = now if running else (ctr.status.finished_at or started)
    ran = max(0, end - started) if started else 0
    out.cpu.timestamp = now
    out.cpu.usage_core_nano_seconds.value = int(ran * rate)
    out.cpu.usage_nano_cores.value = int(rate * 1e9) if running else 0
    wander = 1 + 0.1 * math.sin(now / 7e9 + 10 * _unit(ctr.id, "phase"))
    working_set = int(base * wander) if running else 0
    out.memory.timestamp = now
    out.memory.working_set_bytes.value = working_set
    out.memory.usage_bytes.value = int(working_set * 1.2)
    out.memory.rss_bytes.value = int(working_set * 0.8)
    out.memory.available_bytes.value = max(0, 512 * MiB - working_set)
    out.memory.page_faults.value = int(ran / 1e6 * rate)
    out.memory.major_page_faults.value = 0
    out.writable_layer.timestamp = now
    out.writable_layer.fs_id.mountpoint = "/var/lib/crilab/containers"
    out.writable_layer.used_bytes.value = 4096 + int(ran / 1e9) * 512
    out.writable_layer.inodes_used.value = 10
    return out


def container_stats(state: RuntimeState, container_id: str) -> api_pb2.ContainerStats:
    with state.locked():
        ctr = state._container(container_id)
        return _container_stats(ctr, time.time_ns())


def list_container_stats(
    state: RuntimeState, flt: api_pb2.ContainerStatsFilter | None
) -> list[api_pb2.ContainerStats]:
    now = time.time_ns()
    with state.locked():
        ctrs = list(state.containers.values())
        if flt is not None:
            ctrs = [
                c
                for c in ctrs
                if c.id.startswith(flt.id)
                and c.pod_id.startswith(flt.pod_sandbox_id)
                and _labels_match(c.item.labels, flt.label_selector)
            ]
        return [_container_stats(c, now) for c in ctrs]


def _pod_stats(state: RuntimeState, pod: Pod, now: int) -> api_pb2.PodSandboxStats:
    out = api_pb2.PodSandboxStats()
    out.attributes.id = pod.id
    out.attributes.metadata.CopyFrom(pod.sandbox.metadata)
    out.attributes.labels.update(pod.sandbox.labels)
    out.attributes.annotations.update(pod.sandbox.annotations)
    linux = out.linux
    per = [_container_stats(state.containers[c], now) for c in pod.containers]
    linux.containers.extend(per)
    linux.cpu.timestamp = now
    linux.cpu.usage_core_nano_seconds.value = sum(s.cpu.usage_core_nano_seconds.value for s in per)
    linux.cpu.usage_nano_cores.value = sum(s.cpu.usage_nano_cores.value for s in per)
    linux.memory.timestamp = now
    linux.memory.working_set_bytes.value = sum(s.memory.working_set_bytes.value for s in per)
    linux.memory.usage_bytes.value = sum(s.memory.usage_bytes.value for s in per)
    alive = (now - pod.sandbox.created_at) / 1e9
    linux.network.timestamp = now
    iface = linux.network.default_interface
    iface.name = "eth0"
    iface.rx_bytes.value = int(alive * 1000 * (1 + _unit(pod.id, "rx")))
    iface.tx_bytes.value = int(alive * 600 * (1 + _unit(pod.id, "tx")))
    iface.rx_errors.value = 0
    iface.tx_errors.value = 0
    linux.network.interfaces.append(iface)
    linux.process.timestamp = now
    linux.process.process_count.value = 1 + sum(1 for s in per if s.cpu.usage_nano_cores.value)
    return out


def pod_stats(state: RuntimeState, pod_id: str) -> api_pb2.PodSandboxStats:
    with state.locked():
        return _pod_stats(state, state._pod(pod_id), time.time_ns())


def list_pod_stats(
    state: RuntimeState, flt: api_pb2.PodSandboxStatsFilter | None
) -> list[api_pb2.PodSandboxStats]:
    now = time.time_ns()
    with state.locked():
        pods = list(state.pods.values())
        if flt is not None:
            pods = [
                p
                for p in pods
                if p.id.startswith(flt.id) and _labels_match(p.sandbox.labels, flt.label_selector)
            ]
        return [_pod_stats(state, p, now) for p in pods]


_DESCRIPTORS = (
    ("container_cpu_usage_seconds_total", "Cumulative CPU time consumed, in seconds.", "counter"),
    ("container_memory_working_set_bytes", "Current working set, in bytes.", "gauge"),
    ("container_network_receive_bytes_total", "Bytes received by the pod.", "counter"),
)


def metric_descriptors() -> list[api_pb2.MetricDescriptor]:
    return [
        api_pb2.MetricDescriptor(name=name, help=text, label_keys=["container", "pod"])
        for name, text, _ in _DESCRIPTORS
    ]


def pod_metrics(state: RuntimeState) -> list[api_pb2.PodSandboxMetrics]:
    """The same figures as the stats, in the Prometheus-like shape of ListPodSandboxMetrics."""
    now = time.time_ns()
    out = []
    with state.locked():
        for pod in state.pods.values():
            stats = _pod_stats(state, pod, now)
            pm = api_pb2.PodSandboxMetrics(pod_sandbox_id=pod.id)
            pm.metrics.add(
                name="container_network_receive_bytes_total",
                timestamp=now,
                metric_type=api_pb2.COUNTER,
                label_values=["POD", pod.sandbox.metadata.name],
            ).value.value = stats.linux.network.default_interface.rx_bytes.value
            for cs in stats.linux.containers:
                cm = pm.container_metrics.add(container_id=cs.attributes.id)
                labels = [cs.attributes.metadata.name, pod.sandbox.metadata.name]
                cm.metrics.add(
                    name="container_cpu_usage_seconds_total",
                    timestamp=now,
                    metric_type=api_pb2.COUNTER,
                    label_values=labels,
                ).value.value = cs.cpu.usage_core_nano_seconds.value // 1_000_000_000
                cm.metrics.add(
                    name="container_memory_working_set_bytes",
                    timestamp=now,
                    metric_type=api_pb2.GAUGE,
                    label_values=labels,
                ).value.value = cs.memory.working_set_bytes.value
            out.append(pm)
    return out
