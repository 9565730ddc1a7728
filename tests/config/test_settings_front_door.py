"""The front door's settings and the trusted proxies: typed ``PADDOCK_*`` settings, refused at start when wrong."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from service.config.settings import DEFAULT_DOOR, DoorLimits, Settings


def test_the_door_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().door_limits() == DEFAULT_DOOR
    monkeypatch.setenv("PADDOCK_MAX_CONNECTIONS", "50")
    monkeypatch.setenv("PADDOCK_MAX_HEADER_BYTES", "4096")
    monkeypatch.setenv("PADDOCK_MAX_HEADERS", "20")
    monkeypatch.setenv("PADDOCK_HEADER_TIMEOUT_S", "2.5")
    monkeypatch.setenv("PADDOCK_BODY_TIMEOUT_S", "30")
    assert Settings().door_limits() == DoorLimits(
        max_connections=50, max_header_bytes=4096, max_headers=20, header_timeout_s=2.5, body_timeout_s=30.0
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [("MAX_CONNECTIONS", "0"), ("MAX_HEADER_BYTES", "100"), ("HEADER_TIMEOUT_S", "0"), ("BODY_TIMEOUT_S", "-1")],
)
def test_a_door_limit_that_makes_no_sense_is_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(f"PADDOCK_{name}", value)
    with pytest.raises(ValidationError):
        Settings()


def test_trusted_proxies_are_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().trusted_proxies == ()
    monkeypatch.setenv("PADDOCK_TRUSTED_PROXIES", '["10.0.0.0/8", "192.168.1.7", "10.1.2.3/16", "fd00::/8"]')
    assert Settings().trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.7/32"),
        ipaddress.ip_network("10.1.0.0/16"),  # host bits are allowed, and dropped
        ipaddress.ip_network("fd00::/8"),
    )


@pytest.mark.parametrize("value", ['["not-an-ip"]', '["10.0.0.0/33"]', '"10.0.0.0/8"'])
def test_a_trusted_proxy_that_is_not_a_network_stops_the_process(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PADDOCK_TRUSTED_PROXIES", value)
    with pytest.raises(ValidationError):
        Settings()
