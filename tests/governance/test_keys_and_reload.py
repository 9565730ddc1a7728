"""Keys (made, hashed, looked up), the keys CLI, and hot reload of the governance file."""

from __future__ import annotations

import asyncio
import math
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from service.cli.main import main
from service.governance import reload
from service.governance.keys import KeyIndex, bearer, hash_key, new_key
from service.governance.policy import GovernanceFile
from service.governance.reload import GovernanceError, PolicyHolder, load_governance

STARTER = {"version": 1, "tenants": [{"id": "acme", "models": ["*"], "keys": []}]}


def policy_with(*keys: tuple[str, str]) -> GovernanceFile:
    entries = [{"id": kid, "hash": digest} for kid, digest in keys]
    return GovernanceFile.model_validate({"tenants": [{"id": "acme", "models": ["*"], "keys": entries}]})


def test_keys_are_random_prefixed_and_found_only_by_their_hash() -> None:
    key, other = new_key(), new_key()
    assert key.startswith("pk-") and len(key) > 40 and key != other
    index = KeyIndex(policy_with(("k1", hash_key(key))))
    assert index.lookup(key).key.id == "k1"
    assert index.lookup(other) is None and index.lookup("sk-" + key[3:]) is None
    assert index.lookup(key[:-1]) is None


def test_hmac_hashes_need_the_server_secret_and_plain_hashes_still_work() -> None:
    key, old = new_key(), new_key()
    index = KeyIndex(policy_with(("new", hash_key(key, b"s3cret")), ("old", hash_key(old))), secret=b"s3cret")
    assert index.lookup(key).key.id == "new" and index.lookup(old).key.id == "old"
    assert KeyIndex(policy_with(("new", hash_key(key, b"s3cret")))).lookup(key) is None


def test_bearer_header_parsing() -> None:
    assert bearer("Bearer pk-abc") == "pk-abc" and bearer("bearer  pk-abc ") == "pk-abc"
    assert bearer(None) is None and bearer("Basic xyz") is None and bearer("Bearer ") is None


def test_policy_rejects_unknown_keys_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"tenants": [{"id": "a", "models": ["*"], "limit": {}}]}))
    with pytest.raises(GovernanceError, match=r"g.yaml: tenants\[0\].limit: unknown key"):
        load_governance(path)
    path.write_text(
        yaml.safe_dump(
            {
                "tenants": [
                    {
                        "id": "a",
                        "models": ["*"],
                        "keys": [{"id": "k", "hash": hash_key("pk-x"), "limits": {"requests_per_hour": 3}}],
                    }
                ]
            }
        )
    )
    with pytest.raises(GovernanceError, match="requests_per_hour"):
        load_governance(path)
    twice = {"id": "a", "models": ["*"]}
    path.write_text(yaml.safe_dump({"tenants": [twice, twice]}))
    with pytest.raises(GovernanceError, match="declared twice"):
        load_governance(path)


def test_keys_create_appends_a_hash_never_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "governance.yaml"
    path.write_text(yaml.safe_dump(STARTER))
    assert main(["keys", "create", "--tenant", "acme", "--expires", "30d", "--append", str(path)]) == 0
    out = capsys.readouterr().out
    key = next(word for word in out.split() if word.startswith("pk-"))
    assert key not in path.read_text()
    policy = load_governance(path)
    (entry,) = policy.tenants[0].keys
    assert entry.hash == hash_key(key) and entry.expires > datetime.now(UTC) + timedelta(days=29)
    assert KeyIndex(policy).lookup(key) is not None
    assert main(["keys", "create", "--tenant", "nobody", "--append", str(path)]) == 2


def test_keys_rotate_keeps_the_old_key_valid_for_the_overlap(tmp_path: Path, capsys) -> None:
    path = tmp_path / "governance.yaml"
    path.write_text(yaml.safe_dump(STARTER))
    main(["keys", "create", "--tenant", "acme", "--id", "old", "--append", str(path)])
    old_key = next(w for w in capsys.readouterr().out.split() if w.startswith("pk-"))
    assert (
        main(["keys", "rotate", "--tenant", "acme", "--old-key", "old", "--overlap", "2d", "--append", str(path)]) == 0
    )
    new_key_ = next(w for w in capsys.readouterr().out.split() if w.startswith("pk-"))
    index = KeyIndex(load_governance(path))
    old, new = index.lookup(old_key), index.lookup(new_key_)
    now = datetime.now(UTC)
    assert not old.key.expired(now) and old.key.expired(now + timedelta(days=3))
    assert new.key.expires is None


def test_reload_follows_an_atomic_symlink_swap_and_keeps_the_last_good_policy(tmp_path: Path) -> None:
    """The layout a Kubernetes Secret volume uses: file -> ..data/file, ..data -> ..<timestamp>."""
    key = new_key()
    first, second = tmp_path / "..v1", tmp_path / "..v2"
    first.mkdir()
    second.mkdir()
    (first / "governance.yaml").write_text(yaml.safe_dump(STARTER))
    with_key = {"tenants": [{"id": "acme", "models": ["*"], "keys": [{"id": "k", "hash": hash_key(key)}]}]}
    (second / "governance.yaml").write_text(yaml.safe_dump(with_key))
    os.symlink("..v1", tmp_path / "..data")
    os.symlink("..data/governance.yaml", tmp_path / "governance.yaml")
    results: list[str] = []
    holder = PolicyHolder(tmp_path / "governance.yaml", on_reload=lambda result, error: results.append(result))
    assert holder.index.lookup(key) is None and not holder.reload_if_changed()
    os.symlink("..v2", tmp_path / "..data.tmp")
    os.replace(tmp_path / "..data.tmp", tmp_path / "..data")  # the kubelet's atomic swap
    assert holder.reload_if_changed() and holder.index.lookup(key) is not None
    (tmp_path / "..v3").mkdir()
    (tmp_path / "..v3" / "governance.yaml").write_text("tenants: [{id: acme, models: 7}]")
    os.symlink("..v3", tmp_path / "..data.tmp")
    os.replace(tmp_path / "..data.tmp", tmp_path / "..data")
    assert not holder.reload_if_changed()
    assert holder.index.lookup(key) is not None  # the last good policy stays in force
    assert results == ["ok", "error"]


def test_principals_know_until_when_they_are_usable() -> None:
    keys = [
        {"id": "plain", "hash": hash_key("pk-1")},
        {"id": "dated", "hash": hash_key("pk-2"), "expires": "2030-01-01T00:00:00Z"},
        {"id": "off", "hash": hash_key("pk-3"), "enabled": False},
    ]
    tenants = [{"id": "a", "models": ["*"], "keys": keys}]
    tenants.append({"id": "b", "enabled": False, "models": ["*"], "keys": [{"id": "b1", "hash": hash_key("pk-4")}]})
    index = KeyIndex(GovernanceFile.model_validate({"tenants": tenants}))
    until = {p.key.id: p.usable_until for p in index.principals()}
    assert until == {
        "plain": math.inf,
        "dated": datetime(2030, 1, 1, tzinfo=UTC).timestamp(),
        "off": -math.inf,
        "b1": -math.inf,
    }
    assert index.by_id("plain") == KeyIndex(GovernanceFile.model_validate({"tenants": tenants})).by_id("plain")


def test_the_governance_file_is_read_with_libyaml_when_pyyaml_has_it() -> None:
    assert reload._YAML_LOADER is (yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader)


async def test_the_watcher_loads_in_a_thread_and_swaps_policy_and_index_on_the_loop(tmp_path: Path) -> None:
    key, path = new_key(), tmp_path / "governance.yaml"
    path.write_text(yaml.safe_dump(STARTER))
    results: list[tuple[str, threading.Thread]] = []
    holder = PolicyHolder(path, on_reload=lambda r, e: results.append((r, threading.current_thread())), interval_s=0.01)
    loaders: list[threading.Thread] = []
    load = holder._load_if_changed
    holder._load_if_changed = lambda: loaders.append(threading.current_thread()) or load()  # type: ignore[method-assign]
    watcher = asyncio.create_task(holder.watch())
    try:
        with_key = {"tenants": [{"id": "acme", "models": ["*"], "keys": [{"id": "k", "hash": hash_key(key)}]}]}
        path.write_text(yaml.safe_dump(with_key))
        async with asyncio.timeout(10):
            while holder.index.lookup(key) is None:
                await asyncio.sleep(0.01)
        assert holder.policy.tenants[0].keys[0].id == "k"
        path.write_text("tenants: [{id: acme, models: 7}]")
        async with asyncio.timeout(10):
            while len(results) < 2:
                await asyncio.sleep(0.01)
    finally:
        watcher.cancel()
    assert loaders and threading.main_thread() not in loaders
    assert results == [("ok", threading.main_thread()), ("error", threading.main_thread())]
    assert holder.index.lookup(key) is not None
