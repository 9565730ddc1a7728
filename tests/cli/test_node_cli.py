"""`paddock node drain`'s pure parts: which replicas are still on a node, which node is this machine's,
and the command line (the real drain against a Ray cluster is tests/e2e/test_ray_node_drain.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from service.cli import node
from service.cli.main import parser

NODE, OTHER = "a" * 56, "b" * 56


def replica(deployment: str, node_id: str = NODE, app: str = "paddock", dead: bool = False) -> node.Replica:
    return node.Replica(f"SERVE_REPLICA::{app}#{deployment}#x1", f"ServeReplica:{app}:{deployment}", node_id, dead)


def test_replicas_on_a_node_are_the_apps_live_ones_there() -> None:
    actors = [
        replica("Ingress"),
        replica("model-smollm2"),
        replica("Registry"),
        replica("model-smollm2", node_id=OTHER),  # the replacement, elsewhere
        replica("model-old", dead=True),  # stopped already
        replica("Other", app="someone-else"),  # another Serve app
        node.Replica("SERVE_CONTROLLER_ACTOR", "ServeController", NODE, False),
    ]
    assert node.replicas_on(actors, NODE) == [
        "SERVE_REPLICA::paddock#Ingress#x1",
        "SERVE_REPLICA::paddock#Registry#x1",
        "SERVE_REPLICA::paddock#model-smollm2#x1",
    ]
    assert node.replicas_on(actors, OTHER) == ["SERVE_REPLICA::paddock#model-smollm2#x1"]
    assert node.replicas_on(actors, NODE, app="someone-else") == ["SERVE_REPLICA::someone-else#Other#x1"]
    assert node.replicas_on([], NODE) == []


def test_the_local_node_is_the_one_alive_node_of_a_local_raylet() -> None:
    nodes = [
        node.Node(NODE, is_head=False, alive=True, temp_dir="/tmp/ray"),
        node.Node(OTHER, is_head=True, alive=True, temp_dir="/tmp/ray-head"),
        node.Node("c" * 56, is_head=False, alive=False, temp_dir="/tmp/ray"),
    ]
    assert node.local_node(nodes, {NODE, "d" * 56}) == nodes[0]  # a raylet of another cluster does not count
    assert node.local_node(nodes, {NODE, OTHER}, temp_dir="/tmp/ray-head") == nodes[1]
    with pytest.raises(node.DrainError, match="2 nodes of this cluster run on this machine"):
        node.local_node(nodes, {NODE, OTHER})
    with pytest.raises(node.DrainError, match="0 nodes"):
        node.local_node(nodes, {"c" * 56})  # dead


def test_local_raylets_are_found_by_their_node_id_flag(tmp_path: Path) -> None:
    for pid, args in {
        "11": [b"/venv/ray/core/src/ray/raylet/raylet", b"--raylet_socket_name=/s", f"--node_id={NODE}".encode()],
        "12": [b"/venv/bin/python", b"agent.py", f"--node-id={OTHER}".encode()],  # not a raylet
        "13": [b"/venv/ray/core/src/ray/raylet/raylet", f"--node_id={OTHER}".encode()],
    }.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cmdline").write_bytes(b"\0".join(args) + b"\0")
    (tmp_path / "self").mkdir()
    (tmp_path / "14").mkdir()  # gone before its cmdline was read
    assert node.local_raylet_ids(tmp_path) == {NODE, OTHER}


def test_the_command_line() -> None:
    args = parser().parse_args(["node", "drain", "--deadline-s", "65"])
    assert args.func is node.cmd_node and args.deadline_s == 65.0 and args.app == "paddock"
    assert args.address is None and args.node_id is None and args.temp_dir is None
    for bad in ("0", "-5", "soon"):
        with pytest.raises(SystemExit):
            parser().parse_args(["node", "drain", "--deadline-s", bad])
    with pytest.raises(SystemExit):
        parser().parse_args(["node", "drain"])  # the deadline is required: it is the pod's to give


def test_a_refusal_is_one_line_on_stderr_and_exit_1(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def refuse(_args: object) -> str:
        raise node.DrainError("GCS refused to drain node aaaa: no")

    monkeypatch.setattr(node, "drain", refuse)
    assert node.cmd_node(parser().parse_args(["node", "drain", "--deadline-s", "5"])) == 1
    assert capsys.readouterr().err == "paddock node drain: GCS refused to drain node aaaa: no\n"


def test_the_head_is_never_drained(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the head the command drains nothing and says why (it holds GCS and the Serve controller)."""

    class Gcs:
        def get_all_node_info(self, timeout: float) -> dict[object, object]:
            raise AssertionError("not reached")

        def drain_node(self, *_: object) -> tuple[bool, str]:
            raise AssertionError("the head was drained")

    monkeypatch.setattr(node, "_gcs", lambda *_: Gcs())
    monkeypatch.setattr(node, "_nodes", lambda _gcs: [node.Node(NODE, is_head=True, alive=True, temp_dir="/tmp/ray")])
    monkeypatch.setattr(node, "local_raylet_ids", lambda: {NODE})
    summary = node.drain(parser().parse_args(["node", "drain", "--deadline-s", "5"]))
    assert "is the head" in summary and "not drained" in summary


class FakeGcs:
    def __init__(self, accepted: bool = True) -> None:
        self.accepted, self.drains = accepted, []

    def drain_node(self, node_id: str, reason: int, message: str, deadline_ms: int, timeout: float) -> tuple[bool, str]:
        self.drains.append((node_id, reason, message, deadline_ms))
        return self.accepted, "" if self.accepted else "not now"


def fake_cluster(monkeypatch: pytest.MonkeyPatch, gcs: FakeGcs, rounds: list[list[node.Replica]]) -> None:
    monkeypatch.setattr(node, "_gcs", lambda *_: gcs)
    monkeypatch.setattr(node, "_nodes", lambda _gcs: [node.Node(NODE, is_head=False, alive=True, temp_dir="/t")])
    monkeypatch.setattr(node, "_replicas", lambda _gcs: rounds.pop(0) if len(rounds) > 1 else rounds[0])
    monkeypatch.setattr(node, "POLL_S", 0.01)


def test_the_drain_waits_until_no_replica_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.core.generated import autoscaler_pb2

    gcs = FakeGcs()
    fake_cluster(monkeypatch, gcs, [[replica("Ingress"), replica("model-x")], [replica("model-x")], []])
    summary = node.drain(parser().parse_args(["node", "drain", "--deadline-s", "30", "--node-id", NODE]))
    assert summary.startswith(f"node {NODE[:12]} drained in ") and "no paddock replica left" in summary
    [(node_id, reason, _message, deadline_ms)] = gcs.drains
    assert node_id == NODE and reason == autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION")
    assert abs(deadline_ms / 1000 - (time.time() + 30)) < 5


def test_the_drain_gives_up_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cluster(monkeypatch, FakeGcs(), [[replica("model-x")]])
    began = time.monotonic()
    summary = node.drain(parser().parse_args(["node", "drain", "--deadline-s", "0.3", "--node-id", NODE]))
    assert 0.3 <= time.monotonic() - began < 2
    assert "deadline 0.3s passed with 1 paddock replica(s) left: SERVE_REPLICA::paddock#model-x#x1" in summary


def test_a_refused_drain_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cluster(monkeypatch, FakeGcs(accepted=False), [[]])
    with pytest.raises(node.DrainError, match="GCS refused to drain node .*: not now"):
        node.drain(parser().parse_args(["node", "drain", "--deadline-s", "5", "--node-id", NODE]))
