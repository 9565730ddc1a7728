"""How the Redis state store authenticates: a password given beside the URL (any character), an ACL
user, and TLS verified with a CA bundle; and the settings that carry them (PADDOCK_STATE_STORE_*)."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError

from harness.ports import free_port
from service.config.settings import Settings
from service.governance.factory import redis_auth
from service.governance.store import RedisAuth, open_store
from service.governance.store.base import Quota, Reservation, StoreUnavailable
from service.governance.store.redis import RedisStore

# Every character that broke the old URL splicing: userinfo and path delimiters, and a percent sign.
AWKWARD_PASSWORD = "p@ss/w#rd?x%41:y"
RESERVATION = Reservation("r", "acme", "k1", "m", 1, (Quota("requests_per_minute", "tenant:acme", 100),))


async def admitted(store: RedisStore) -> bool:
    try:
        return (await store.admit(RESERVATION, 30)).admitted
    finally:
        await store.close()


async def test_a_password_with_url_delimiters_is_sent_as_is(start_redis) -> None:
    server = start_redis(password=AWKWARD_PASSWORD)
    url = f"redis://127.0.0.1:{server.port}/1"
    assert await admitted(RedisStore(url, auth=RedisAuth(password=AWKWARD_PASSWORD)))
    wrong = RedisStore(url, auth=RedisAuth(password=AWKWARD_PASSWORD + "-not"))
    with pytest.raises(StoreUnavailable) as raised:
        await admitted(wrong)
    assert AWKWARD_PASSWORD not in str(raised.value)


async def test_an_acl_user_authenticates_with_its_own_password(start_redis) -> None:
    server = start_redis(password="admin-pw")
    admin = redis.Redis(host="127.0.0.1", port=server.port, password="admin-pw")
    try:
        admin.execute_command("ACL", "SETUSER", "paddock", "on", f">{AWKWARD_PASSWORD}", "~paddock:*", "+@all")
    finally:
        admin.close()
    url = f"redis://127.0.0.1:{server.port}/0"
    assert await admitted(RedisStore(url, auth=RedisAuth(username="paddock", password=AWKWARD_PASSWORD)))
    # The same password for the default user is wrong: the username really was used.
    with pytest.raises(StoreUnavailable):
        await admitted(RedisStore(url, auth=RedisAuth(password=AWKWARD_PASSWORD)))


@pytest.mark.parametrize(
    ("url", "auth", "message"),
    [
        ("redis://:pw-in-url@127.0.0.1:1/0", RedisAuth(password="pw-beside"), "both in the URL and given separately"),
        ("redis://user@127.0.0.1:1/0", RedisAuth(username="other"), "both in the URL and given separately"),
        ("redis://127.0.0.1:1/0", RedisAuth(ca_file=Path("/ca.crt")), "use a rediss:// URL"),
    ],
)
def test_ambiguous_or_inconsistent_credentials_are_refused(url: str, auth: RedisAuth, message: str) -> None:
    with pytest.raises(StoreUnavailable, match=message) as raised:
        RedisStore(url, auth=auth)
    assert "pw-in-url" not in str(raised.value) and "pw-beside" not in str(raised.value)


# --- TLS ---------------------------------------------------------------------------------------


def openssl(*args: str | Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        pytest.fail("openssl is not installed: run scripts/install-tools.sh")
    subprocess.run([binary, *map(str, args)], check=True, capture_output=True, timeout=60)


def make_certificates(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA of its own and a server certificate for 127.0.0.1 it signed: (ca, cert, key)."""
    ca, ca_key = directory / f"{name}-ca.crt", directory / f"{name}-ca.key"
    cert, key, csr = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.csr"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", f"/CN={name} test CA")
    openssl("req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    extensions = directory / f"{name}.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    signed = ["-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "1", "-extfile", extensions]
    openssl("x509", "-req", "-in", csr, *signed, "-out", cert)
    return ca, cert, key


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server of this test's own that speaks TLS only: (port, the CA that signed its certificate)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run scripts/install-tools.sh")
    ca, cert, key = make_certificates(tmp_path, "redis")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        + ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca)]
        + ["--tls-auth-clients", "no", "--dir", str(tmp_path), "--logfile", str(tmp_path / "redis.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + 10
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"TLS redis-server exited with {process.returncode}: see {tmp_path}/redis.log")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw:
                    with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
                        conn.sendall(b"PING\r\n")
                        if conn.recv(64).startswith(b"+PONG"):
                            break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"TLS redis-server on port {port} did not answer within 10 s")
                time.sleep(0.05)
        yield port, ca
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_tls_is_verified_with_the_ca_bundle(tls_redis: tuple[int, Path], tmp_path: Path) -> None:
    port, ca = tls_redis
    url = f"rediss://127.0.0.1:{port}/1"
    assert await admitted(RedisStore(url, auth=RedisAuth(ca_file=ca)))
    # A CA that did not sign the server's certificate: the connection is refused, not trusted.
    other_ca, _, _ = make_certificates(tmp_path, "other")
    with pytest.raises(StoreUnavailable, match="certificate verify failed"):
        await admitted(RedisStore(url, auth=RedisAuth(ca_file=other_ca)))


# --- the settings ------------------------------------------------------------------------------


def test_settings_carry_the_credentials_beside_the_url(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(AWKWARD_PASSWORD + "\n")  # a mounted Secret's trailing newline is not part of it
    ca = tmp_path / "ca.crt"
    settings = Settings(
        state_store="rediss://redis.example:6380/1",
        state_store_username="paddock",
        state_store_password_file=secret,
        state_store_ca_file=ca,
    )
    assert redis_auth(settings) == RedisAuth(username="paddock", password=AWKWARD_PASSWORD, ca_file=ca)
    assert AWKWARD_PASSWORD not in repr(redis_auth(settings))
    assert redis_auth(Settings(state_store="redis://redis.example:6379/1")) == RedisAuth()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"state_store_username": "paddock"}, "PADDOCK_STATE_STORE_USERNAME needs a Redis state store"),
        ({"state_store_password_file": Path("/pw")}, "PADDOCK_STATE_STORE_PASSWORD_FILE needs a Redis state store"),
        (
            {"state_store": "redis://redis.example:6379/1", "state_store_ca_file": Path("/ca")},
            "must be a rediss:// URL",
        ),
    ],
)
def test_settings_refuse_redis_options_that_cannot_apply(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**fields)  # type: ignore[arg-type]


async def test_open_store_passes_the_credentials_to_redis(start_redis, tmp_path: Path) -> None:
    server = start_redis(password=AWKWARD_PASSWORD)
    store = open_store(f"redis://127.0.0.1:{server.port}/2", tmp_path, RedisAuth(password=AWKWARD_PASSWORD))
    assert isinstance(store, RedisStore)
    assert await admitted(store)
