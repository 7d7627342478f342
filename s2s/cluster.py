"""What the Ray cluster offers, asked before a stage starts work: nodes, capacity, growth.

The stages call these so that a job is refused up front, with the numbers, where it would
otherwise wait forever (workers that can never be placed) or write where nobody looks (a local
path on a cluster of several machines). Like the stages, and unlike the noun modules, this one
talks to Ray; it imports no stage.
"""

from __future__ import annotations

import json
import logging
import time

import ray

from s2s import storage
from s2s.config import ConfigError

__all__ = ["connect", "check_local_paths", "wait_for_capacity"]

log = logging.getLogger(__name__)


def connect() -> None:
    """Join the cluster of ``RAY_ADDRESS`` / ``ray job submit``, or start an embedded local one."""
    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING)


def alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n["Alive"]]


def check_local_paths(uris: list[str], shared_fs: bool) -> dict:
    """Refuse local paths on a cluster of several nodes; pin a one-node job that uses them.

    A local path names a directory on *one* machine: on a cluster of several nodes the workers
    on the others would read nothing or write where nobody looks. With ``shared_fs`` the user
    declares the path to be mounted on every node (NFS, EFS, a FUSE-mounted bucket).

    Returns:
        Ray remote arguments for the job's tasks and actors: none where every path is remote
        (or shared); otherwise a label selector that keeps them on the driver's node (as Ray
        Data pins ``local://`` reads), so that a node the autoscaler adds later does not scatter
        files over two machines. Connects to Ray only to count the nodes.

    Raises:
        ConfigError: local paths, several alive nodes and no ``shared_fs``.
    """
    local = [u for u in uris if u and not storage.is_s3(u)]
    if not local or shared_fs:
        return {}
    connect()
    nodes = alive_nodes()
    if len(nodes) > 1:
        raise ConfigError(
            f"{local[0]} is a local path, but the Ray cluster has {len(nodes)} nodes: workers on "
            "the other nodes cannot see it. Use object storage (s3://bucket/...), or set "
            "shared_fs=true if the path is a filesystem mounted on every node"
        )
    return {"label_selector": {"ray.io/node-id": ray.get_runtime_context().get_node_id()}}


def _max_resources() -> dict | None:
    """The most an autoscaling cluster can grow to (from the autoscaler's config in Ray's
    control plane), or None where no autoscaler reported one."""
    try:  # private but long-standing; Ray Train asks the same before placing its workers
        from ray._private import state

        return state.state.get_max_resources_from_cluster_config()
    except Exception:  # an older or newer Ray without it: treat as unknown
        return None


def _autoscaler_running() -> bool:
    """Whether an autoscaler (v1) manages the cluster, as ``ray status`` reads it. Every head
    runs the monitor that writes this status; without a cluster config (``ray start``, an
    embedded local Ray) it runs a read-only provider that names each node's type
    ``node_<node id>`` and never launches one. A real one (``ray up``, KubeRay) names the types
    of its config."""
    try:
        from ray.experimental.internal_kv import _internal_kv_get

        report = json.loads(_internal_kv_get("__autoscaling_status") or b"{}")
        types = (report.get("autoscaler_report") or {}).get("node_type_mapping") or {}
        return any(kind != f"node_{node}" for node, kind in types.items())
    except Exception:
        return False


_TRAIN_FIX = (
    "lower the number of workers or their resources, or give a range (workers=1-N) to train on "
    "what is there"
)


def wait_for_capacity(
    per_worker: dict[str, float], count: int, what: str, timeout_s: float, fix: str = _TRAIN_FIX
) -> None:
    """Return once the cluster holds ``count`` times ``per_worker`` resources in total, or
    refuse with the numbers.

    * fits now: return at once;
    * an autoscaler's maximum is known and too small, or no autoscaler runs (a fixed cluster,
      an embedded local one): refuse at once;
    * otherwise ask the autoscaler for the resources and wait at most ``timeout_s``.

    Raises:
        ConfigError: naming ``what`` needs, what the cluster has, and what to change (``fix``).
    """
    per_worker = {k: v for k, v in per_worker.items() if v > 0}
    need = {k: v * count for k, v in per_worker.items()}

    def missing() -> dict[str, float]:
        have = ray.cluster_resources()
        return {k: v for k, v in need.items() if have.get(k, 0.0) < v - 1e-9}

    if not missing():
        return
    maximum = _max_resources()
    have = ray.cluster_resources()

    def refuse(reason: str) -> ConfigError:
        short = ", ".join(f"{v:g} {k}" for k, v in need.items())
        has = ", ".join(f"{have.get(k, 0.0):g} {k}" for k in need)
        return ConfigError(f"{what} needs {short}; the cluster has {has} and {reason}: {fix}")

    if maximum is not None and any(maximum.get(k, 0) < v for k, v in need.items()):
        raise refuse(f"its autoscaler can grow it to {maximum}")
    if maximum is None and not _autoscaler_running():
        raise refuse("no autoscaler to grow it")
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[per_worker] * count)
    log.info("waiting up to %.0f s for the autoscaler to add %s", timeout_s, missing())
    deadline = time.monotonic() + timeout_s
    while missing():
        if time.monotonic() > deadline:
            have = ray.cluster_resources()
            raise refuse(f"did not grow within wait_for_workers_s={timeout_s:g}")
        time.sleep(2)
