"""The CLI reads the PADDOCK_* variables through Settings (the same names as ever); flags still win."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.cli import main as cli
from service.config.loader import default_config
from service.config.schema import ServiceConfig
from service.config.settings import Settings
from service.governance.keys import hash_key
from service.governance.reload import load_governance

CLI_DIR = Path(cli.__file__).resolve().parent
VARIABLES = (
    "PADDOCK_CONFIG",
    "PADDOCK_HOST",
    "PADDOCK_PORT",
    "PADDOCK_ADMIN_PORT",
    "PADDOCK_METRICS_PORT",
    "PADDOCK_ADMIN_TOKEN",
    "PADDOCK_ADMIN_TOKEN_FILE",
    "PADDOCK_ADMIN_URL",
    "PADDOCK_KEY_SECRET_FILE",
    "PADDOCK_STATE_DIR",
    "PADDOCK_CACHE_DIR",
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_the_cli_reads_no_environment_itself() -> None:
    for path in sorted(CLI_DIR.glob("*.py")):
        text = path.read_text()
        for word in ("os.environ", "getenv", "environ["):
            assert word not in text, f"{path.name} reads the environment ({word}); read Settings instead"


# --- paddock serve / prepare ---------------------------------------------------------------------


def served(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> tuple[ServiceConfig, Settings]:
    """Run `paddock serve …` with serve_forever replaced: what would it serve?"""
    seen: list[tuple[ServiceConfig, Settings]] = []
    monkeypatch.setattr("service.serve.local.serve_forever", lambda config, settings: seen.append((config, settings)))
    monkeypatch.setattr("service.observability.logs.configure_logging", lambda level, fmt: None)
    assert cli.main(["serve", *argv]) == 0
    [result] = seen
    return result


def test_serve_applies_the_settings_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PADDOCK_HOST", "0.0.0.0")
    monkeypatch.setenv("PADDOCK_PORT", "9000")
    monkeypatch.setenv("PADDOCK_ADMIN_PORT", "9001")
    monkeypatch.setenv("PADDOCK_METRICS_PORT", "9002")
    config, settings = served(monkeypatch, [])
    assert (config.ingress.host, config.ingress.port, config.admin.port, config.metrics.port) == (
        "0.0.0.0",
        9000,
        9001,
        9002,
    )
    assert config.models == default_config().models and settings.port == 9000


def test_serve_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PADDOCK_HOST", "0.0.0.0")
    monkeypatch.setenv("PADDOCK_PORT", "9000")
    path = tmp_path / "paddock.yaml"
    path.write_text(
        yaml.safe_dump({"ingress": {"port": 7000}, "models": [{"id": "e", "source": {"path": "/e"}, "task": "embed"}]})
    )
    monkeypatch.setenv("PADDOCK_CONFIG", str(tmp_path / "not-this.yaml"))
    config, _ = served(monkeypatch, ["--config", str(path), "--port", "9500", "--host", "127.0.0.2"])
    assert (config.ingress.host, config.ingress.port) == ("127.0.0.2", 9500)
    assert [m.id for m in config.models] == ["e"]


def test_serve_with_a_config_file_and_no_overrides_serves_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "paddock.yaml"
    path.write_text(
        yaml.safe_dump({"ingress": {"port": 7000}, "models": [{"id": "e", "source": {"path": "/e"}, "task": "embed"}]})
    )
    monkeypatch.setenv("PADDOCK_CONFIG", str(path))
    config, _ = served(monkeypatch, [])
    assert config.ingress.port == 7000 and config.admin.port == 8001


def test_invalid_settings_fail_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PADDOCK_PORT", "not-a-port")
    monkeypatch.setattr("service.serve.local.serve_forever", lambda config, settings: pytest.fail("served"))
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "paddock: invalid settings" in err and "PADDOCK_PORT:" in err


def test_prepare_uses_the_same_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "paddock.yaml"
    path.write_text(yaml.safe_dump({"models": [{"id": "e", "source": {"path": "/e"}, "task": "embed"}]}))
    monkeypatch.setenv("PADDOCK_CACHE_DIR", str(tmp_path / "cache"))
    resolved: list[tuple[str, Path]] = []

    def resolve(model: Any, cache_dir: Path, report: Any) -> Path:
        resolved.append((model.id, cache_dir))
        return cache_dir / model.id

    monkeypatch.setattr("service.models.sources.resolve", resolve)
    assert cli.main(["prepare", "--config", str(path)]) == 0
    assert resolved == [("e", tmp_path / "cache")]
    assert "[e] ready:" in capsys.readouterr().out


# --- paddock admin -------------------------------------------------------------------------------


class AdminStub(ThreadingHTTPServer):
    requests: list[tuple[str, str, str | None]]


class Handler(BaseHTTPRequestHandler):
    server: AdminStub

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.requests.append(("GET", self.path, self.headers.get("authorization")))
        body = json.dumps({"kills": []}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def admin_api() -> Iterator[AdminStub]:
    server = AdminStub(("127.0.0.1", 0), Handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def url(server: AdminStub) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_admin_sends_paddock_admin_token_to_paddock_admin_url(
    admin_api: AdminStub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PADDOCK_ADMIN_URL", url(admin_api))
    monkeypatch.setenv("PADDOCK_ADMIN_TOKEN", "from-the-env")
    assert cli.main(["admin", "status"]) == 0
    assert admin_api.requests == [("GET", "/admin/v1/kills", "Bearer from-the-env")]
    assert json.loads(capsys.readouterr().out) == {"kills": []}


def test_admin_url_flag_wins_and_the_token_file_is_the_settings_one(
    admin_api: AdminStub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PADDOCK_ADMIN_URL", "http://127.0.0.1:9/never")
    token_file = tmp_path / "admin-token"
    token_file.write_text("from-the-file\n")
    monkeypatch.setenv("PADDOCK_ADMIN_TOKEN_FILE", str(token_file))
    assert cli.main(["admin", "--url", url(admin_api), "keys"]) == 0
    assert admin_api.requests == [("GET", "/admin/v1/keys", "Bearer from-the-file")]


def test_admin_token_file_default_is_under_the_state_dir(
    admin_api: AdminStub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "admin-token").write_text("local-token\n")
    monkeypatch.setenv("PADDOCK_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("PADDOCK_ADMIN_URL", url(admin_api))
    monkeypatch.setenv("PADDOCK_ADMIN_TOKEN", "")  # empty: unset, as it always was
    assert cli.main(["admin", "status"]) == 0
    assert admin_api.requests[-1][2] == "Bearer local-token"
    other = tmp_path / "other-token"
    other.write_text("flag-token")
    assert cli.main(["admin", "--token-file", str(other), "status"]) == 0
    assert admin_api.requests[-1][2] == "Bearer flag-token"


def test_admin_url_default() -> None:
    args = cli.parser().parse_args(["admin", "status"])
    assert args.url is None and Settings().admin_url == "http://127.0.0.1:8001"


# --- paddock keys --------------------------------------------------------------------------------


def governance_file(tmp_path: Path) -> Path:
    path = tmp_path / "governance.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "tenants": [{"id": "acme", "models": ["*"], "keys": []}]}))
    return path


def created(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[str, str]:
    key = next(word for word in capsys.readouterr().out.split() if word.startswith("pk-"))
    return key, load_governance(path).tenants[0].keys[-1].hash


def test_keys_create_honours_paddock_key_secret_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = governance_file(tmp_path)
    secret = tmp_path / "key-secret"
    secret.write_bytes(b"s3cret\n")
    monkeypatch.setenv("PADDOCK_KEY_SECRET_FILE", str(secret))
    assert cli.main(["keys", "create", "--tenant", "acme", "--append", str(path)]) == 0
    key, digest = created(capsys, path)
    assert digest == hash_key(key, b"s3cret") and digest.startswith("hmac-sha256:")


def test_keys_secret_file_flag_wins_and_an_empty_variable_means_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = governance_file(tmp_path)
    env_secret, flag_secret = tmp_path / "env-secret", tmp_path / "flag-secret"
    env_secret.write_bytes(b"from-env")
    flag_secret.write_bytes(b"from-flag")
    monkeypatch.setenv("PADDOCK_KEY_SECRET_FILE", str(env_secret))
    assert (
        cli.main(["keys", "create", "--tenant", "acme", "--secret-file", str(flag_secret), "--append", str(path)]) == 0
    )
    key, digest = created(capsys, path)
    assert digest == hash_key(key, b"from-flag")
    monkeypatch.setenv("PADDOCK_KEY_SECRET_FILE", "")
    assert cli.main(["keys", "create", "--tenant", "acme", "--append", str(path)]) == 0
    key, digest = created(capsys, path)
    assert digest == hash_key(key) and digest.startswith("sha256:")


# --- paddock audit verify ------------------------------------------------------------------------


def test_audit_verify_treats_an_empty_key_file_variable_as_unset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.governance.audit import AuditLog

    log = AuditLog(tmp_path / "audit", key=None, writer_id="w")
    log.close()
    path = log.path
    monkeypatch.setenv("PADDOCK_AUDIT_KEY_FILE", "")
    assert cli.main(["audit", "verify", str(path)]) == 3  # intact, checked without a key: UNAUTHENTICATED
    assert capsys.readouterr().out.startswith(f"{path}: ok (2 records, UNAUTHENTICATED)")
    monkeypatch.setenv("PADDOCK_AUDIT_KEY_FILE", str(tmp_path / "missing.key"))
    assert cli.main(["audit", "verify", str(path)]) == 1
    assert "cannot use the key file" in capsys.readouterr().err
