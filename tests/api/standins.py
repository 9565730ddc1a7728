"""Stand-ins shared by the ingress tests."""

from __future__ import annotations

from service.api.upstream import Endpoint


class OneReplicaDirectory:
    """Every model has one replica, always ready."""

    ready = True

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def endpoints(self, model_id: str) -> list[Endpoint]:
        return [self.endpoint]

    async def wake(self, model_id: str, timeout_s: float) -> list[Endpoint]:
        return [self.endpoint]

    def report_unreachable(self, model_id: str, endpoint: Endpoint) -> None:
        pass
