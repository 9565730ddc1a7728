"""vLLM's errors in Paddock's terms: config keys instead of CLI flags, and the field a bad grammar came from."""

from __future__ import annotations

import pytest
from vllm.entrypoints.serve.engine.protocol import ErrorInfo, ErrorResponse

from service.engine.vllm_engine.results import config_terms, structured_output_field, to_api_error

# The messages vLLM 0.32's renderer answers a tool call with when no tool parser is set.
AUTO = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
REQUIRED = 'tool_choice="required" requires --tool-call-parser to be set'


def vllm_error(message: str, code: int = 400, param: str | None = None) -> ErrorResponse:
    return ErrorResponse(error=ErrorInfo(message=message, type="BadRequestError", param=param, code=code))


@pytest.mark.parametrize("message", [AUTO, REQUIRED])
def test_tool_parser_flags_become_the_model_entry_key(message: str) -> None:
    rewritten = config_terms(message)
    assert "--" not in rewritten
    assert "models[].tool_call_parser in the Paddock config" in rewritten
    assert to_api_error(vllm_error(message)).message == rewritten


def test_other_flags_name_engine_args_and_plain_text_is_untouched() -> None:
    assert (
        config_terms("raise --max-logprobs to 20")
        == "raise `models[].engine_args.max_logprobs` in the Paddock config to 20"
    )
    assert "models[].reasoning_parser" in config_terms("needs --reasoning-parser")
    assert config_terms("a -- b, and -1") == "a -- b, and -1"


def test_a_grammar_that_does_not_compile_is_a_400_naming_its_field() -> None:
    body = {"messages": [], "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}
    error = to_api_error(vllm_error("Grammar error: Invalid type: nonsense"), body)
    assert error.status == 400 and error.param == "response_format.json_schema.schema"
    assert "Grammar error: Invalid type: nonsense" in error.message
    assert structured_output_field({"structured_outputs": {"regex": "("}}) == "structured_outputs"
    assert structured_output_field({"tools": [{}], "tool_choice": "required"}) == "tools"
    assert structured_output_field({"messages": []}) is None


def test_a_vllm_param_is_kept_and_other_errors_are_unchanged() -> None:
    error = to_api_error(vllm_error("Grammar error: x", param="structured_outputs"), {"response_format": {}})
    assert error.param == "structured_outputs"
    assert to_api_error(vllm_error("boom", code=500), {"response_format": {}}).status == 500


def test_reasoning_is_renamed_only_where_it_is_a_key() -> None:
    """Inside string values (content, tool arguments) the key's quotes are escaped: left alone."""
    from service.engine.vllm_engine.results import reasoning_as_content_field

    chunk = (
        b'data: {"choices":[{"delta":{"reasoning":"think \\"reasoning\\": no"},'
        b'"tool_calls":[{"function":{"arguments":"{\\"reasoning\\":1}"}}]}]}\n\n'
    )
    renamed = reasoning_as_content_field(chunk)
    assert renamed.count(b'"reasoning_content":') == 1
    assert renamed.replace(b'"reasoning_content":', b'"reasoning":') == chunk


def test_a_vllm_client_error_is_a_400_naming_its_parameter() -> None:
    """vLLM's own validators raise VLLMValidationError (not a pydantic error): a 400, never a 500."""
    from vllm.exceptions import VLLMValidationError

    from service.engine.vllm_engine.results import client_error

    try:
        try:
            raise ValueError("Token string resolution requires tokenizer_info")
        except ValueError as cause:
            raise VLLMValidationError("Invalid structural tag.", parameter="structured_outputs") from cause
    except VLLMValidationError as error:
        mapped = client_error(error, {})
    assert (mapped.status, mapped.param) == (400, "structured_outputs")
    assert "Invalid structural tag." in mapped.message and "tokenizer_info" in mapped.message
    unnamed = client_error(VLLMValidationError("Invalid grammar specification."), {"structured_outputs": {}})
    assert unnamed.param == "structured_outputs"
