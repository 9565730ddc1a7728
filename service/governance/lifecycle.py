"""One governed request, from receipt to settlement, as governance sees it.

The ingress opens an :class:`Intake` for every API request and keeps it open
until the request has ended. Inside it, the request is authenticated, its model
resolved and the request admitted; any protocol error raised before admission
(a governance :class:`Refusal`, or the ingress's own 400/404/413) is written to
the audit log as the refused request's record when the intake closes.
Admission returns a :class:`Ticket`, whose admitted record is on file before
anything is forwarded. The ticket then runs the request's work
(:meth:`Ticket.run`) until it ends, times out or is killed — a kill completes
the ticket's ``stop`` future, which the work itself waits on beside the
client's disconnect, never a cancel from outside — and :meth:`Ticket.close`
settles the reservation and writes the completed record.

No path leaks a lease: an error (or a cancel) that leaves the intake after
admission, before the ticket was closed, closes it there; and a ticket that
nothing holds any more is settled by its drop guard (the governor holds
tickets weakly, so it stops renewing a lost ticket's lease too).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from service.config.schema import ModelConfig
from service.governance.keys import Principal
from service.governance.params import Shaped
from service.governance.refusal import Refusal
from service.governance.store.base import Reservation, Usage
from service.governance.usage import UsageTap
from service.observability.requests import CLIENT_CLOSED
from service.protocol.errors import APIError, Disconnected, internal, timeout
from service.protocol.streams import StreamHook

if TYPE_CHECKING:
    from service.governance.governor import Governor


def _stop_future() -> asyncio.Future[BaseException]:
    return asyncio.get_running_loop().create_future()


Outcome = Literal["ok", "killed", "timeout", "error", "client_disconnected", "cancelled"]
# How a request's charge was worked out (the completed record's ``charged_by``): the engine's usage; the whole
# reservation (a response cut short before its usage); the reserved prompt tokens (the engine had the request
# but answered no usage: an upstream error, a timeout or a client gone before the response); nothing (never
# reached an engine, refused by a replica at capacity, or killed by an operator before any response).
ChargeBasis = Literal["usage", "reservation", "prompt", "none"]


@dataclass(eq=False, slots=True, weakref_slot=True)
class Ticket:
    """One admitted request, from decision to settlement.

    The governor holds tickets weakly: a ticket nobody holds any more (a path that lost it unsettled) stops
    being renewed, and its drop guard settles its lease and completes its record (``Governor._dropped``).
    """

    request_id: str
    principal: Principal
    model: ModelConfig
    route: str
    shaped: Shaped
    reservation: Reservation
    lease_id: str | None
    headers: dict[str, str]
    started: float
    client: str
    governor: Governor | None = field(default=None, repr=False)
    tap: UsageTap | None = None  # reads usage (and the text, if audited) off the relayed response
    hooks: tuple[StreamHook, ...] = ()  # what the relay passes the response through: the tap, then guardrails
    killed: str | None = None  # the kill's message, once killed
    killed_by: str = ""  # the kill's scope, e.g. "model:x"
    settled: bool = False
    outcome: Outcome = "ok"
    artifact: str | None = None  # the served model files' manifest digest (the audit records' ``artifact``)
    stop: asyncio.Future[BaseException] = field(default_factory=_stop_future, repr=False)  # set by a kill
    disarm: Callable[[], object] | None = field(default=None, repr=False)  # detaches the drop guard once settled

    def kill(self, message: str, scope: str = "all") -> None:
        """Stop this request: its ``stop`` future now holds the kill's refusal, for the work to raise."""
        if self.killed is None:
            self.killed, self.killed_by = message, scope
            if not self.stop.done():
                self.stop.set_result(Refusal("killed", message, detail=scope))

    async def run(self, work: Coroutine[Any, Any, None]) -> None:
        """Run the request's work to its end, within the tenant's time limit (else 504); ``outcome`` says how
        it ended.

        The work observes :attr:`stop` (the relay waits on it beside the client's disconnect): a kill ends it
        from inside, with the kill's refusal (503), and nothing cancels the task the request runs in.
        """
        if self.killed is not None:
            work.close()
            self.outcome = "killed"
            raise self.stop.result()
        try:
            async with asyncio.timeout(self.shaped.timeout_s):
                await work
        except TimeoutError:
            self.outcome = "timeout"
            raise timeout("The request exceeded its time limit.") from None
        except asyncio.CancelledError:
            self.outcome = "cancelled"
            raise
        except Refusal as refusal:
            self.outcome = "killed" if refusal.reason == "killed" else "error"
            raise
        except Disconnected:
            self.outcome = "client_disconnected"
            raise
        except Exception:
            self.outcome = "error"
            raise

    async def close(
        self, status: int, response_started: bool, *, reached_engine: bool = False, artifact: str | None = None
    ) -> Usage | None:
        """Settle the reservation and write the completed record; return the usage the engine reported, if any.

        ``reached_engine``: the request was handed to a replica that did not refuse it unprocessed (see
        :meth:`charge`). A client gone before its response started is on record as 499, whatever ``status``.
        ``artifact``: the digest the replica it was sent to announced (else the admitted record's stays).
        """
        assert self.governor is not None
        if artifact is not None:
            self.artifact = artifact
        tap = self.tap
        reported = tap.usage if tap else None
        charged, basis = self.charge(reported, response_started, reached_engine)
        if self.outcome == "client_disconnected" and not response_started:
            status = CLIENT_CLOSED
        await self.governor.settle(self, charged)
        completion = tap.completion() if tap and self.principal.tenant.audit.include_text else None
        self.governor.trail.completed(
            self,
            status=status,
            usage=reported,
            outcome=self.outcome,
            completion=completion,
            charged=charged,
            basis=basis,
        )
        return reported

    def charge(self, reported: Usage | None, response_started: bool, reached_engine: bool) -> tuple[Usage, ChargeBasis]:
        """What the request is charged: the engine's usage when it reported one, else by how far it got."""
        if reported is not None:
            return reported, "usage"
        if response_started:  # cut short before its usage event: the worst case it was admitted for
            return Usage(self.reservation.tokens, 0), "reservation"
        if reached_engine and self.outcome != "killed":  # the engine had it, and said nothing of its cost
            return Usage(self.shaped.prompt_tokens, 0), "prompt"
        return Usage(0, 0), "none"


class Intake:
    """A request on its way in: authenticated, resolved and admitted, or refused on the record."""

    __slots__ = ("_governor", "request_id", "route", "client", "started", "principal", "model", "ticket")

    def __init__(self, governor: Governor, request_id: str, route: str, client: str) -> None:
        self._governor = governor
        self.request_id, self.route, self.client = request_id, route, client
        self.started = time.monotonic()
        self.principal: Principal | None = None
        self.model: ModelConfig | None = None
        self.ticket: Ticket | None = None  # once admitted: closed here if the request fails before its owner closes it

    async def __aenter__(self) -> Intake:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        ticket = self.ticket
        if ticket is None:
            if isinstance(error, APIError):  # refused before it was forwarded, by governance or the ingress
                self._record_refusal(error)
            elif isinstance(error, Disconnected):  # gone before its body was read: nothing admitted, but on record
                self._record_refusal(APIError(CLIENT_CLOSED, "The client disconnected.", code="client_disconnected"))
            elif isinstance(error, Exception):  # a bug before admission (answered 500): on the record too
                self._record_refusal(internal())
        elif error is not None and not ticket.settled:
            await self._abandon(ticket, error)

    async def _abandon(self, ticket: Ticket, error: BaseException) -> None:
        """An admitted request that failed before whoever ran it closed it: settle it and complete its record."""
        if isinstance(error, asyncio.CancelledError):
            ticket.outcome, status = "cancelled", CLIENT_CLOSED
        elif isinstance(error, Disconnected):
            ticket.outcome, status = "client_disconnected", CLIENT_CLOSED
        else:
            if ticket.outcome == "ok":
                ticket.outcome = "error"
            status = error.status if isinstance(error, APIError) else 500
        await ticket.close(status, response_started=False)

    def _record_refusal(self, error: APIError) -> None:
        refusal = error if isinstance(error, Refusal) else None
        self._governor.trail.refused(
            request_id=self.request_id,
            route=self.route,
            client=self.client,
            reason=refusal.reason if refusal else error.code or error.type,
            detail=refusal.detail if refusal else None,
            status=error.status,
            started=self.started,
            principal=self.principal,
            model=self.model.id if self.model else None,
        )

    async def authenticate(self, authorization: str | None) -> Principal:
        self.principal = await self._governor.authenticate(authorization, self.client)
        return self.principal

    def resolve(self, name: str) -> ModelConfig | None:
        """The model ``name`` names, if this principal may use it (a model not allowed reads as unknown)."""
        assert self.principal is not None
        return self._governor.resolve(self.principal, name)

    async def admit(self, model: ModelConfig, body: dict[str, Any], *, finish_reasons: bool = False) -> Ticket:
        """Admit the request (its admitted record is written before this returns)."""
        assert self.principal is not None
        self.model = model
        ticket = await self._governor.admit(self.principal, model, self.route, body, self.request_id, self.client)
        self.ticket = ticket  # from here on, leaving the intake with an error closes the ticket
        shaped, keep_text = ticket.shaped, self.principal.tenant.audit.include_text
        ticket.tap = UsageTap(False, shaped.stream and not shaped.include_usage, keep_text, finish_reasons)
        ticket.hooks = (ticket.tap,)
        self._governor.trail.admitted(ticket)
        return ticket
