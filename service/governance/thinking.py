"""Reasoning levers on the Anthropic Messages API: ``output_config.effort`` and ``thinking``.

vLLM's Anthropic layer turns ``output_config.effort`` into the chat ``reasoning_effort``,
``thinking: {type: disabled}`` into a no-thinking effort and ``thinking.budget_tokens`` into a
thinking-token budget, which it requires to be below ``max_tokens``. A tenant's
``max_reasoning_effort`` caps the first two as it caps chat and Responses; the budget is kept
under the (possibly clamped) ``max_tokens``.
"""

from __future__ import annotations

from typing import Any

from service.governance.policy import REASONING_EFFORTS
from service.governance.refusal import Refusal

ANTHROPIC_EFFORTS = ("low", "medium", "high", "xhigh", "max")
MIN_THINKING_BUDGET = 1024  # Anthropic's (and vLLM's) least budget_tokens


def cap_anthropic_effort(shaped: dict[str, Any], cap: str) -> None:
    """Lower ``output_config.effort`` to ``cap`` (absent: ``min(cap, medium)``); below ``low``, no thinking."""
    config = shaped.get("output_config")
    if config is not None and not isinstance(config, dict):
        raise _invalid("output_config", "output_config must be an object.")
    config = dict(config or {})
    effort = config.get("effort")
    if effort is not None and effort not in ANTHROPIC_EFFORTS:
        raise _invalid("output_config.effort", f"effort must be one of {', '.join(ANTHROPIC_EFFORTS)}.")
    limit = REASONING_EFFORTS.index(cap)
    if limit < REASONING_EFFORTS.index("low"):  # none / minimal: no thinking at all
        config.pop("effort", None)
        shaped["thinking"] = {"type": "disabled"}
    elif effort is None:
        config["effort"] = REASONING_EFFORTS[min(limit, REASONING_EFFORTS.index("medium"))]
    elif REASONING_EFFORTS.index(effort) > limit:
        config["effort"] = cap if cap in ANTHROPIC_EFFORTS else "max"
    if config or "output_config" in shaped:
        shaped["output_config"] = config


def fit_thinking_budget(shaped: dict[str, Any]) -> None:
    """Keep ``thinking.budget_tokens`` below ``max_tokens`` (which the output cap may have lowered)."""
    thinking = shaped.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return
    budget, max_tokens = thinking.get("budget_tokens"), shaped.get("max_tokens")
    if type(budget) is not int or type(max_tokens) is not int or budget < max_tokens:
        return  # malformed values are the engine's 400; a budget that fits is left alone
    if max_tokens - 1 < MIN_THINKING_BUDGET:
        raise _invalid(
            "thinking.budget_tokens",
            f"max_tokens is {max_tokens} for this key, which leaves no room for a thinking budget "
            f"(at least {MIN_THINKING_BUDGET}, below max_tokens).",
        )
    shaped["thinking"] = {**thinking, "budget_tokens": max_tokens - 1}


def _invalid(param: str, message: str) -> Refusal:
    return Refusal("invalid_parameter", message, param=param)
