"""Schemathesis, pointed at a running Paddock: how both fuzz tests (tests/api, tests/e2e) run it.

The fuzzer is foreign: it knows Paddock only through the OpenAPI document a port serves at ``/openapi.json``,
and talks to it over a real socket, with its own engine (the one its CLI runs). For every response it checks
that

* it is not a 5xx (``not_a_server_error``), and its status is one the document lists for the operation;
* its content type is one the document lists for that status;
* its body matches the documented schema (OpenAI's or Anthropic's error object, the loose success shapes);
* the documented required headers are there (``x-request-id``);
* with the coverage phase, a method the document does not list for a path is a 405 (``unsupported_method``).

Cases name a served model two times in three (a hook), so requests get past the model lookup into governance
and the engine; the third keeps the generated name (a 404, or whatever else it provokes). The budget is the
caller's: examples per operation, whether the coverage phase (boundary values of every field, every
undocumented method) runs. One round is run (a time limit would make schemathesis fuzz round after round
until it); the test that calls it bounds its time.
"""

from __future__ import annotations

import collections
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from schemathesis.engine import Status, StopReason, events, from_schema

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "unsupported_method",
)


@dataclass
class Report:
    """What one run sent and found."""

    failures: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)  # a request (curl) that found each failure, in order
    statuses: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)  # (operation, status)
    stop_reason: StopReason | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        """Every distinct failure with a request that shows it, then what each operation was answered."""
        found = [f"{line}\n  {sample}" for line, sample in zip(self.failures, self.samples, strict=False)]
        answers = ", ".join(f"{label} {status}: {n}" for (label, status), n in sorted(self.statuses.items()))
        return "\n\n".join([*found, f"answers: {answers}"])

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def answered(self, operation: str, low: int, high: int) -> int:
        """How many answers to ``operation`` (``"POST /v1/chat/completions"``) had a status in [low, high)."""
        return sum(n for (label, status), n in self.statuses.items() if label == operation and low <= status < high)


def configure(url: str, headers: dict[str, str], *, max_examples: int, coverage: bool, seed: int = 17) -> Any:
    """The document at ``url`` as a schemathesis schema with the run's budget, checks and credential."""
    config = schemathesis.Config.from_dict(
        {
            "seed": seed,
            "cache": {"enabled": False},
            # Hypothesis's checks of its own generation (slow under a loaded CI machine, free-form path strings
            # it filters): they say nothing of the server, and a failed one would skip the operation.
            "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large", "large_base_example"],
            "headers": headers,
            "workers": 1,
            "request-timeout": 30,
            "generation": {
                "mode": "all",  # requests that follow the document and ones that break it
                "max-examples": max_examples,
                "with-security-parameters": False,  # the credential is the caller's; fuzzing it only meets 401s
                "database": "none",  # nothing written into the work tree
            },
            "phases": {
                "examples": {"enabled": False},
                "coverage": {"enabled": coverage},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        }
    )
    return schemathesis.openapi.from_url(url, config=config, timeout=10)


def name_models(schema: Any, models: Mapping[str, Sequence[str]]) -> None:
    """Make two cases in three name a model the operation serves (in the body, or the ``{model}`` path parameter).

    ``models`` maps an operation's path to the models to name (``"*"``: every other path). The choice is a hash
    of what was generated, so a case replays the same (Hypothesis needs that).
    """

    def pick(path: str, given: dict[str, Any], key: str) -> dict[str, Any]:
        names = list(models.get(path, models.get("*", ())))
        if not names or not isinstance(given.get(key), str):
            return given
        choices = [*names, *names, given[key]]
        digest = zlib.crc32(repr(given).encode("utf-8", "surrogatepass"))
        return {**given, key: choices[digest % len(choices)]}

    @schema.hook
    def map_case(context: Any, case: Any) -> Any:  # both phases: fuzzing and coverage
        path = case.operation.path
        if isinstance(case.body, dict):
            case.body = pick(path, case.body, "model")
        if case.path_parameters:
            case.path_parameters = pick(path, dict(case.path_parameters), "model")
        return case


def run(schema: Any) -> Report:
    """Run every configured phase against the server; each failed check (with its curl) is one ``failures`` line."""
    report = Report()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            _collect(event, report)
        elif isinstance(event, events.NonFatalError):
            report.failures.append(f"{event.label}: schemathesis could not run it: {event.info.title}")
            report.samples.append(_shorten(f"{event.info}\n{event.value!r}"))
        elif isinstance(event, events.FatalError):
            report.failures.append(f"schemathesis stopped: {event.exception!r}")
            report.samples.append("")
        elif isinstance(event, events.EngineFinished):
            report.stop_reason, report.seconds = event.stop_reason, event.running_time
    return report


def _shorten(text: str, limit: int = 800) -> str:
    return (
        text if len(text) <= limit else f"{text[: limit // 2]} …[{len(text) - limit} characters]… {text[-limit // 2 :]}"
    )


def _collect(event: events.ScenarioFinished, report: Report) -> None:
    recorder = event.recorder
    for interaction in recorder.interactions.values():
        if interaction.response is not None:
            report.statuses[(recorder.label, interaction.response.status_code)] += 1
    if event.status not in (Status.FAILURE, Status.ERROR):
        return
    for checks in recorder.checks.values():
        for check in checks:
            if check.status == Status.FAILURE and check.failure_info is not None:
                failure = check.failure_info.failure
                line = f"{recorder.label}: {failure.title}: {failure.message}"
                if line not in report.failures:  # one line per distinct failure, with the first request found
                    report.failures.append(line)
                    report.samples.append(_shorten(check.failure_info.code_sample))
