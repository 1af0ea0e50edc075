"""The OpenAPI document is what clients are generated from: valid, secured, with every answer.

Nothing here lists today's routes: each check runs over whatever routes the app has, so a route
added tomorrow is held to the same standard (and documented by the same code) without an edit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from moderation.config import Settings
from moderation.core.openapi import SECURITY_SCHEME, api_routes, install_openapi
from moderation.core.pagination import Page
from moderation.main import create_app
from moderation.submissions.schemas import SubmissionSummary
from moderation.tenants.dependencies import Reviewer

PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"
# Routes anyone may call; /docs and /openapi.json are not in the document itself.
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}
# Bodies for which an example says nothing a client can use.
BINARY = {"image/jpeg", "image/png", "application/octet-stream"}


@pytest.fixture(scope="module")
def app() -> FastAPI:
    return create_app(Settings(database_url="postgresql://unused@127.0.0.1:1/none"))


@pytest.fixture(scope="module")
def document(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def schema_validator(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """Validate against `schema` with the document's components in reach of its $refs."""
    return Draft202012Validator({**schema, "components": document["components"]})


def test_the_document_is_valid_openapi(document):
    validate(document)
    assert document["openapi"].startswith("3.1")


def test_the_served_document_is_the_completed_one(app, document):
    served = TestClient(app).get("/openapi.json")
    assert served.status_code == 200
    assert served.json() == document


def test_every_route_is_in_the_document(app, document):
    documented = {(method, path) for method, path, _ in operations(document)}
    served = {
        (method, route.path)
        for route in api_routes(app.routes)
        if route.include_in_schema
        for method in route.methods
    }
    assert served == documented


def test_operation_ids_are_unique_handler_names(document):
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids))
    assert "create_submission" in ids


def test_every_route_but_the_public_ones_needs_a_bearer_key(document):
    scheme = document["components"]["securitySchemes"][SECURITY_SCHEME]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for method, path, operation in operations(document):
        if (method, path) in PUBLIC:
            assert "security" not in operation, (method, path)
            continue
        assert operation.get("security") == [{SECURITY_SCHEME: []}], (method, path)
        roles = operation["x-roles"]
        assert "admin" in roles and set(roles) <= {"ingest", "reviewer", "admin"}
        assert "Roles: " + ", ".join(f"`{r}`" for r in roles) in operation["description"]


def test_every_route_documents_the_problems_it_can_answer(document):
    for method, path, operation in operations(document):
        responses = operation["responses"]
        expected = set()
        if "security" in operation:
            expected |= {"401", "403"}
        if "{" in path:
            expected |= {"404"}
        if operation.get("parameters") or "requestBody" in operation:
            expected |= {"422"}
        if "requestBody" in operation:
            expected |= {"413"}
        assert expected <= responses.keys(), (method, path, sorted(responses))
        for status, response in responses.items():
            if int(status) < 400 or (method, path) == ("GET", "/readyz"):
                continue
            assert response["description"], (method, path, status)
            media = response["content"]
            assert list(media) == [PROBLEM_JSON], (method, path, status)
            assert media[PROBLEM_JSON]["schema"] == {"$ref": PROBLEM_REF}
            example = media[PROBLEM_JSON]["example"]
            assert example["status"] == int(status)
            schema_validator(document, {"$ref": PROBLEM_REF}).validate(example)
        if "401" in responses:
            assert "WWW-Authenticate" in responses["401"]["headers"]


def test_route_specific_problems_are_kept(document):
    create = document["paths"]["/v1/submissions"]["post"]["responses"]
    assert {"409", "413", "415", "422"} <= create.keys()


def test_every_request_and_response_has_an_example_that_fits_its_schema(document):
    missing = []
    for method, path, operation in operations(document):
        bodies = [("request", operation["requestBody"])] if "requestBody" in operation else []
        bodies += [(status, r) for status, r in operation["responses"].items()]
        for where, body in bodies:
            for media_type, media in body.get("content", {}).items():
                if media_type in BINARY:
                    continue
                if "example" not in media:
                    missing.append(f"{method} {path} {where} {media_type}")
                    continue
                schema_validator(document, media["schema"]).validate(media["example"])
    assert not missing, "no example (give the model json_schema_extra examples): " + str(missing)


def test_schema_examples_fit_their_schemas(document):
    for name, schema in document["components"]["schemas"].items():
        for example in schema.get("examples", []):
            schema_validator(document, {"$ref": f"#/components/schemas/{name}"}).validate(example)


def test_the_hand_referenced_submission_body_is_in_components(document):
    body = document["paths"]["/v1/submissions"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/SubmissionCreate"}
    assert {"SubmissionCreate", "ImageInput", "Problem", "FieldError"} <= document["components"][
        "schemas"
    ].keys()
    assert "multipart/form-data" in body
    # FastAPI's own 422 body is replaced by Problem everywhere, so its schemas are gone.
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_a_route_added_later_is_documented_without_declaring_anything(app):
    """What another router gets for free: security, roles, problems and a composed example."""
    extra = APIRouter(prefix="/v1/later")

    @extra.get("/{thing_id}", response_model=Page[SubmissionSummary])
    def read_later_thing(thing_id: int, _: Reviewer) -> Page[SubmissionSummary]:
        raise NotImplementedError

    later = FastAPI()
    install_openapi(later)
    later.include_router(extra)
    operation = later.openapi()["paths"]["/v1/later/{thing_id}"]["get"]
    assert operation["security"] == [{SECURITY_SCHEME: []}]
    assert operation["x-roles"] == ["admin", "reviewer"]
    assert {"401", "403", "404", "422"} <= operation["responses"].keys()
    example = operation["responses"]["200"]["content"]["application/json"]["example"]
    assert example["items"][0]["external_id"] == "upload-8f14e45f"
    assert example["next_cursor"]
