"""The OpenAPI documents (service/protocol/openapi.py): valid OpenAPI 3.1, made from the tables the servers route by."""

from __future__ import annotations

import json

import pytest
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from service.protocol.openapi import admin_document, api_document, request_schema
from service.protocol.routes import MODELS, OPENAPI, PROBES, ROUTES

ADMIN_OPERATIONS = [("GET", "/admin/v1/kills"), ("POST", "/admin/v1/disable"), ("GET", "/admin/v1/usage")]


def test_both_documents_are_valid_openapi_3_1() -> None:
    OPENAPI_31_VALIDATOR.validate(api_document())
    OPENAPI_31_VALIDATOR.validate(admin_document(ADMIN_OPERATIONS))


def test_every_route_of_the_route_table_is_a_post_whose_body_is_exactly_its_allowed_fields() -> None:
    paths = api_document()["paths"]
    assert set(paths) == {*ROUTES, *PROBES, MODELS, f"{MODELS}/{{model}}"}
    for path, route in ROUTES.items():
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == request_schema(route)
        assert set(body["properties"]) == route.fields and body["additionalProperties"] is False
        assert set(body["required"]) <= route.fields


def test_every_error_has_its_dialects_shape_and_500_is_never_an_answer() -> None:
    paths = api_document()["paths"]
    for path, item in paths.items():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            assert "500" not in operation["responses"], path
            for status, answer in operation["responses"].items():
                if int(status) < 400:
                    continue
                schema = json.dumps(answer["content"]["application/json"]["schema"])
                anthropic = path in ROUTES and ROUTES[path].dialect == "anthropic"
                assert ("AnthropicError" in schema) == anthropic, (path, status)
                assert "OpenAIError" in schema or not {"408", "431"} & {status}, (path, status)


def test_the_document_needs_no_key_and_names_no_model() -> None:
    document = api_document()
    assert document["paths"][OPENAPI]["get"]["security"] == []
    assert api_document() == document  # made from the route table alone: no config, so no model id


def test_an_admin_operation_without_a_schema_cannot_be_served_undocumented() -> None:
    with pytest.raises(KeyError):
        admin_document([("DELETE", "/admin/v1/kills")])
