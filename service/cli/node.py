"""``paddock node drain``: a Ray worker pod's preStop (docs/kubernetes.md, "Node drains").

It asks GCS to drain this Ray node (reason PREEMPTION, with a deadline), as ``ray drain-node`` does.
Ray Serve's controller then migrates every replica off the node: it starts a replacement on another
node and stops the old replica gracefully once the replacement runs, or when the deadline less the
replica's ``graceful_shutdown_timeout_s`` comes (``ray/serve/_private/deployment_state.py``,
``migrate_replicas_on_draining_nodes``). A stopping Ingress answers new requests 503 + retry-after
and lets its streams finish; a Model replica deregisters, then lets its streams finish. The command
waits until no replica of the Paddock app is left on the node, or the deadline passes.

It never drains the head: the head holds GCS and the Serve controller, so no replica placement can
outlive it, and its pod stopping ends the cluster (the chart runs no replicas there).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.serve.local import APP_NAME

POLL_S = 0.5
RPC_TIMEOUT_S = 10.0
ALIVE_NODE = 0  # GcsNodeInfo.GcsNodeState.ALIVE
DEAD_ACTOR = 4  # ActorTableData.ActorState.DEAD


class DrainError(RuntimeError):
    """The node to drain cannot be told apart, or GCS refused the drain."""


@dataclass(frozen=True)
class Node:
    node_id: str
    is_head: bool
    alive: bool
    temp_dir: str


@dataclass(frozen=True)
class Replica:
    """A Ray Serve replica actor: ``class_name`` is ``ServeReplica:<app>:<deployment>``."""

    name: str
    class_name: str
    node_id: str
    dead: bool


def replicas_on(actors: Iterable[Replica], node_id: str, app: str = APP_NAME) -> list[str]:
    """The names of ``app``'s Serve replicas (any deployment) not yet dead on ``node_id``, sorted."""
    prefix = f"ServeReplica:{app}:"
    return sorted(a.name for a in actors if not a.dead and a.node_id == node_id and a.class_name.startswith(prefix))


def local_node(nodes: Sequence[Node], raylet_ids: Iterable[str], temp_dir: str | None = None) -> Node:
    """This machine's one alive node of the cluster: a local raylet's, in ``temp_dir`` if given."""
    local = set(raylet_ids)
    found = [n for n in nodes if n.alive and n.node_id in local and (temp_dir is None or n.temp_dir == temp_dir)]
    if len(found) != 1:
        where = f" with temp dir {temp_dir}" if temp_dir else ""
        raise DrainError(
            f"{len(found)} nodes of this cluster run on this machine{where}: name one with --node-id (or --temp-dir)"
        )
    return found[0]


def local_raylet_ids(proc: Path = Path("/proc")) -> set[str]:
    """Node ids of the raylets running on this machine (their ``--node_id=`` flag)."""
    ids: set[str] = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"/raylet"):
            ids.update(a.removeprefix(b"--node_id=").decode() for a in args if a.startswith(b"--node_id="))
    return ids


def _gcs(address: str | None, temp_dir: str | None) -> Any:
    from ray._private import services
    from ray._raylet import GcsClient  # type: ignore[attr-defined]  # compiled, not in its stub

    try:  # Ray's own CLI enables token auth when a token exists but RAY_AUTH_MODE is unset
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    except ImportError:
        pass
    return GcsClient(address=services.canonicalize_bootstrap_address_or_die(address, temp_dir=temp_dir))


def _nodes(gcs: Any) -> list[Node]:
    return [
        Node(node_id.hex(), bool(info.is_head_node), info.state == ALIVE_NODE, info.temp_dir)
        for node_id, info in gcs.get_all_node_info(timeout=RPC_TIMEOUT_S).items()
    ]


def _replicas(gcs: Any) -> list[Replica]:
    async def fetch() -> Any:  # the client's future belongs to the loop it is made in
        return await gcs.async_get_all_actor_info(timeout=RPC_TIMEOUT_S)

    actors = asyncio.run(fetch())
    return [
        Replica(a.name, a.class_name, a.address.node_id.hex(), a.state == DEAD_ACTOR)
        for a in actors.values()
        if a.class_name.startswith("ServeReplica:")
    ]


def drain(args: argparse.Namespace) -> str:
    """Drain the node and wait; the one-line summary."""
    began, started = time.time(), time.monotonic()  # the deadline counts from here, Ray's imports included
    from ray.core.generated import autoscaler_pb2

    gcs = _gcs(args.address, args.temp_dir)
    nodes = _nodes(gcs)
    if args.node_id:
        node = next((n for n in nodes if n.node_id == args.node_id and n.alive), None)
        if node is None:
            raise DrainError(f"no alive node {args.node_id} in this cluster")
    else:
        node = local_node(nodes, local_raylet_ids(), args.temp_dir)
    short = node.node_id[:12]
    if node.is_head:
        return f"node {short} is the head (GCS, Serve controller): not drained; its stop ends the cluster"
    deadline_ms = int((began + args.deadline_s) * 1000)
    accepted, refusal = gcs.drain_node(
        node.node_id,
        autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
        args.reason,
        deadline_ms,
        timeout=RPC_TIMEOUT_S,
    )
    if not accepted:
        raise DrainError(f"GCS refused to drain node {short}: {refusal}")
    wait_until = started + args.deadline_s
    while True:
        left = replicas_on(_replicas(gcs), node.node_id, args.app)
        elapsed = time.monotonic() - started
        if not left:
            return f"node {short} drained in {elapsed:.1f}s (deadline {args.deadline_s:g}s): no {args.app} replica left"
        if time.monotonic() >= wait_until:
            return (
                f"node {short}: deadline {args.deadline_s:g}s passed with {len(left)} {args.app} "
                f"replica(s) left: {', '.join(left)}"
            )
        time.sleep(min(POLL_S, max(0.0, wait_until - time.monotonic())))


def cmd_node(args: argparse.Namespace) -> int:
    try:
        summary = drain(args)
    except DrainError as error:
        print(f"paddock node drain: {error}", file=sys.stderr, flush=True)
        return 1
    except Exception as error:  # noqa: BLE001 - a preStop: one line (GCS gone, say), never a traceback
        print(f"paddock node drain: cannot drain: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return 1
    print(f"paddock node drain: {summary}", file=sys.stderr, flush=True)
    return 0


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def register(sub: Any) -> None:
    node = sub.add_parser("node", help="Ray node operations (a Ray worker pod's preStop)")
    actions = node.add_subparsers(dest="action", required=True)
    drain_cmd = actions.add_parser(
        "drain", help="drain this Ray node: Serve moves its replicas away; wait until none is left or the deadline"
    )
    drain_cmd.add_argument(
        "--deadline-s", type=_seconds, required=True, help="seconds until the node is stopped (GCS's drain deadline)"
    )
    drain_cmd.add_argument("--address", help="GCS address (default: $RAY_ADDRESS, else the local node's cluster)")
    drain_cmd.add_argument("--node-id", help="the node's hex id (default: the Ray node running on this machine)")
    drain_cmd.add_argument("--temp-dir", help="the local node's Ray temp dir, when several nodes run on this machine")
    drain_cmd.add_argument("--app", default=APP_NAME, help=f"the Serve application to wait for (default: {APP_NAME})")
    drain_cmd.add_argument("--reason", default="Pod stopping (paddock node drain)", help="the drain's reason message")
    drain_cmd.set_defaults(func=cmd_node)
