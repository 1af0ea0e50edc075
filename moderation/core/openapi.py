"""The OpenAPI document, completed from what the routes already say about themselves.

Clients are generated from this document, so it must tell the whole truth about every route,
including the ones added after this module was written. Rather than asking each route to
repeat the same declarations, the document FastAPI builds is completed here, route by route:

- a route whose dependencies include a `RoleRequirement` (the API-key dependency) is secured:
  it gets the bearer security requirement, `x-roles` and a "Roles:" line in its description,
  and 401, 403 and 429 problems (every key has rate limits);
- a route with parameters or a body can answer 422, a route with a body 413 (the body-size cap
  covers every route) and 400 (a body unreadable as its type), a route with a path parameter
  404, a secured route 503 (authentication reads the database);
- whatever else a route declares with `problem_responses(...)` (409, 415, 429, 503...) is kept;
- every problem is `application/problem+json` with the `Problem` schema, an example and, where
  the status has one, its header (`WWW-Authenticate`, `Retry-After`);
- every JSON request and response gets an example, taken from the schema's own `examples` or
  composed from the examples of its parts; `documented_model` registers models that a route
  names by hand (a route that reads its body itself, in several wire forms).

`install_openapi(app)` replaces `app.openapi`; it runs once, at the first request for the
document, after every router has been included.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.routing import BaseRoute

from moderation.core.problems import PROBLEM_JSON, Problem, problem_responses

SECURITY_SCHEME = "ApiKey"
_REF_PREFIX = "#/components/schemas/"
_METHODS_WITH_BODY = {"POST", "PUT", "PATCH"}


class RoleRequirement:
    """An authentication dependency that admits some roles: the document reads `roles` here."""

    roles: frozenset[str]


_EXAMPLE_PROBLEMS: dict[int, dict[str, Any]] = {
    400: {"title": "Bad request", "detail": "the request is malformed"},
    401: {"title": "Unauthorized", "detail": "missing Authorization: Bearer <api key>"},
    403: {
        "title": "Forbidden",
        "detail": "this needs one of the roles: admin, reviewer; the key has ingest",
    },
    404: {
        "title": "Not found",
        "detail": "submission 7d0c6f4e-0000-4000-8000-000000000000 does not exist",
    },
    409: {"title": "Conflict", "detail": "conflicts with the object's current state"},
    413: {
        "title": "Payload too large",
        "detail": "request body (application/json) is larger than 29010606 bytes",
    },
    415: {
        "title": "Unsupported media type",
        "detail": "send application/json or multipart/form-data",
    },
    422: {
        "title": "Validation failed",
        "detail": "the request does not match the schema",
        "errors": [
            {
                "loc": ["body", "external_id"],
                "msg": "String should have at least 1 character",
                "type": "string_too_short",
            }
        ],
    },
    429: {"title": "Too many requests", "detail": "slow down; retry after 2 seconds"},
    503: {"title": "Service unavailable", "detail": "the database is not answering"},
}

_PROBLEM_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": "The authentication scheme to use: `Bearer`",
            "schema": {"type": "string", "example": "Bearer"},
        }
    },
    429: {
        "Retry-After": {
            "description": "Seconds to wait before sending the request again",
            "schema": {"type": "integer", "minimum": 0},
        }
    },
    503: {
        "Retry-After": {
            "description": "Seconds to wait before sending the request again",
            "schema": {"type": "integer", "minimum": 0},
        }
    },
}

# Models that routes reference by hand (see documented_model), added to components on build.
_HAND_REFERENCED: dict[str, type[BaseModel]] = {}


def documented_model(model: type[BaseModel]) -> dict[str, str]:
    """A `$ref` to `model` for hand-written `openapi_extra`, with the model put in components."""
    _HAND_REFERENCED[model.__name__] = model
    return {"$ref": _REF_PREFIX + model.__name__}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
                servers=app.servers,
            )
            app.openapi_schema = complete_openapi(document, app.routes)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


@dataclass(frozen=True)
class ApiRoute:
    """An API route as served: its full path (router prefixes included) and what it declares."""

    path: str
    methods: frozenset[str]
    name: str
    include_in_schema: bool
    dependant: Dependant

    @property
    def roles(self) -> frozenset[str] | None:
        """The roles the route admits, from its authentication dependency; None when public."""
        for dependant in _dependants(self.dependant):
            if isinstance(dependant.call, RoleRequirement):
                return dependant.call.roles
        return None


def api_routes(routes: Sequence[BaseRoute]) -> Iterator[ApiRoute]:
    """Every FastAPI route of an app, however deeply its router was included."""
    for context in iter_route_contexts(routes):
        if isinstance(context.original_route, APIRoute):
            yield ApiRoute(
                path=str(context.path_format),
                methods=frozenset(context.methods or ()),
                name=str(context.name),
                include_in_schema=bool(context.include_in_schema),
                dependant=context.dependant,
            )


def operation_id(route: APIRoute) -> str:
    """The handler's own name (`create_submission`): what a generated client calls the method."""
    return route.name


def complete_openapi(document: dict[str, Any], routes: Sequence[BaseRoute]) -> dict[str, Any]:
    document = copy.deepcopy(document)
    components = document.setdefault("components", {})
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    _add_models(schemas, [Problem, *_HAND_REFERENCED.values()])
    for schema in schemas.values():
        for example in schema.get("examples", []):
            restore_nulls(example, schema, schemas)
    for route in api_routes(routes):
        if not route.include_in_schema:
            continue
        for method in sorted(route.methods):
            operation = document["paths"][route.path][method.lower()]
            _complete_operation(operation, route, method, schemas)
    if any(
        "security" in operation
        for path in document["paths"].values()
        for operation in path.values()
    ):
        components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "API key (mk_...)",
            "description": "An API key of one tenant and one role: ingest, reviewer or admin. "
            "Admin keys may call every route.",
        }
    _drop_unused_validation_schemas(document)
    unresolved = sorted(_unresolved_refs(document))
    if unresolved:
        raise RuntimeError(f"the OpenAPI document references missing schemas: {unresolved}")
    return document


def _dependants(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for child in dependant.dependencies:
        yield from _dependants(child)


def _add_models(schemas: dict[str, Any], models: Sequence[type[BaseModel]]) -> None:
    _, definitions = models_json_schema(
        [(model, "validation") for model in models], ref_template=_REF_PREFIX + "{model}"
    )
    for name, schema in definitions.get("$defs", {}).items():
        schemas.setdefault(name, schema)


def _complete_operation(
    operation: dict[str, Any], route: ApiRoute, method: str, schemas: dict[str, Any]
) -> None:
    roles = route.roles
    responses: dict[str, Any] = operation.setdefault("responses", {})
    if roles is not None:
        operation["security"] = [{SECURITY_SCHEME: []}]
        admitted = sorted(roles | {"admin"})
        operation["x-roles"] = admitted
        line = "Roles: " + ", ".join(f"`{role}`" for role in admitted) + "."
        description = operation.get("description", "").strip()
        operation["description"] = f"{description}\n\n{line}" if description else line
        _ensure_problem(responses, 401)
        _ensure_problem(responses, 403)
        # Authentication reads the database: while it is away, every secured route says 503.
        _ensure_problem(responses, 503)
        _ensure_problem(responses, 429)
    has_body = "requestBody" in operation or (
        method in _METHODS_WITH_BODY and bool(route.dependant.body_params)
    )
    if operation.get("parameters") or has_body:
        _ensure_problem(responses, 422)
    else:
        # FastAPI counts the hidden Authorization header as input; alone, it cannot fail to parse.
        responses.pop("422", None)
    if has_body:
        _ensure_problem(responses, 413)
        # A body that cannot be read as its declared type at all (broken multipart, say).
        _ensure_problem(responses, 400)
    if any(parameter.get("in") == "path" for parameter in operation.get("parameters", [])):
        _ensure_problem(responses, 404)
    for status, response in responses.items():
        if status.isdigit() and int(status) >= 400:
            _as_problem(int(status), response)
        elif status.startswith("2"):
            _add_examples(response.get("content", {}), schemas)
    if "requestBody" in operation:
        _add_examples(operation["requestBody"].get("content", {}), schemas)
    operation["responses"] = dict(sorted(responses.items()))


def _ensure_problem(responses: dict[str, Any], status: int) -> None:
    if str(status) not in responses:
        entry = dict(problem_responses(status)[status])
        entry.pop("model", None)
        responses[str(status)] = entry


def _is_problem_schema(schema: dict[str, Any] | None) -> bool:
    return schema is None or schema.get("$ref") in (
        _REF_PREFIX + "Problem",
        _REF_PREFIX + "HTTPValidationError",
    )


def _as_problem(status: int, response: dict[str, Any]) -> None:
    """Make an error response a documented problem, unless it declares a body of its own."""
    content: dict[str, Any] = response.get("content") or {}
    if any(not _is_problem_schema(media.get("schema")) for media in content.values()):
        return
    if response.get("description") in (None, "", "Validation Error"):
        response["description"] = problem_responses(status)[status]["description"]
    example = _EXAMPLE_PROBLEMS.get(status, {"title": "Error", "detail": "the request failed"})
    slug = str(example["title"]).lower().replace(" ", "-")
    response["content"] = {
        PROBLEM_JSON: {
            "schema": {"$ref": _REF_PREFIX + "Problem"},
            "example": {
                "type": f"https://moderation.dev/problems/{slug}",
                "status": status,
                **example,
            },
        }
    }
    headers = _PROBLEM_HEADERS.get(status)
    if headers:
        response["headers"] = {**headers, **response.get("headers", {})}


def _add_examples(content: dict[str, Any], schemas: dict[str, Any]) -> None:
    for media in content.values():
        if "schema" not in media or "examples" in media:
            continue
        if "example" in media:
            restore_nulls(media["example"], media["schema"], schemas)
            continue
        example = compose_example(media["schema"], schemas)
        if example is not _MISSING:
            media["example"] = example


def _allows_null(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    return any(
        _allows_null(alternative)
        for key in ("anyOf", "oneOf")
        for alternative in schema.get(key, [])
    )


def restore_nulls(
    value: Any, schema: dict[str, Any], schemas: dict[str, Any], depth: int = 0
) -> None:
    """Put back the nulls FastAPI leaves out of examples when it writes the document.

    FastAPI serialises the document without None values, which also strips `"reason": null`
    from a hand-written example; a required, nullable field would then be missing and the
    example would contradict its own schema. Every required property the schema allows to be
    null, and that the example lacks, is set back to null, all the way down.
    """
    if depth > 24:
        return
    if "$ref" in schema:
        target = schemas.get(schema["$ref"].removeprefix(_REF_PREFIX))
        if target is not None:
            restore_nulls(value, target, schemas, depth + 1)
        return
    for key in ("anyOf", "oneOf", "allOf"):
        alternatives = [a for a in schema.get(key, []) if a.get("type") != "null"]
        # Only an unambiguous union (`X | None`) says which schema the value follows.
        if len(alternatives) == 1 or key == "allOf":
            for alternative in alternatives:
                restore_nulls(value, alternative, schemas, depth + 1)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            restore_nulls(item, schema["items"], schemas, depth + 1)
    elif isinstance(value, dict) and "properties" in schema:
        properties: dict[str, Any] = schema["properties"]
        for name in schema.get("required", []):
            if name not in value and name in properties and _allows_null(properties[name]):
                value[name] = None
        for name, item in value.items():
            if name in properties:
                restore_nulls(item, properties[name], schemas, depth + 1)


class _Missing:
    def __repr__(self) -> str:
        return "<no example>"


_MISSING: Any = _Missing()


def compose_example(schema: dict[str, Any], schemas: dict[str, Any], depth: int = 0) -> Any:
    """An example for `schema`: its own, else one built from its parts' examples.

    Nothing is invented: a required property with no example (and no default) leaves the whole
    object without one, which the document's test reports so the model can be given one.
    """
    if depth > 12:
        return _MISSING
    if "$ref" in schema:
        target = schemas.get(schema["$ref"].removeprefix(_REF_PREFIX))
        return _MISSING if target is None else compose_example(target, schemas, depth + 1)
    if schema.get("examples"):
        return schema["examples"][0]
    for key in ("example", "const", "default"):
        if key in schema:
            return schema[key]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            alternatives = cast(list[dict[str, Any]], schema[key])
            for alternative in alternatives:
                if alternative.get("type") == "null":
                    continue
                found = compose_example(alternative, schemas, depth + 1)
                if found is not _MISSING:
                    return found
            if any(alternative.get("type") == "null" for alternative in alternatives):
                return None
            return _MISSING
    kind = schema.get("type")
    if kind == "null":
        return None
    if kind == "array":
        item = compose_example(schema.get("items", {}), schemas, depth + 1)
        return _MISSING if item is _MISSING else [item]
    if kind == "object" or "properties" in schema:
        required = set(schema.get("required", []))
        composed: dict[str, Any] = {}
        for name, property_schema in schema.get("properties", {}).items():
            value = compose_example(property_schema, schemas, depth + 1)
            if value is not _MISSING:
                composed[name] = value
            elif name in required:
                return _MISSING
        return composed
    return _MISSING


def _drop_unused_validation_schemas(document: dict[str, Any]) -> None:
    """FastAPI's own 422 body is replaced by Problem; its schemas go unless something uses them."""
    schemas = document["components"]["schemas"]
    own = ("HTTPValidationError", "ValidationError")
    elsewhere = [document["paths"], {k: v for k, v in schemas.items() if k not in own}]
    used = set(_refs(elsewhere))
    for name in own:
        if name in schemas and _REF_PREFIX + name not in used:
            del schemas[name]


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, child in node.items():
            if key == "$ref" and isinstance(child, str):
                yield child
            else:
                yield from _refs(child)
    elif isinstance(node, list):
        for child in node:
            yield from _refs(child)


def _unresolved_refs(document: dict[str, Any]) -> set[str]:
    schemas = document.get("components", {}).get("schemas", {})
    return {
        ref
        for ref in _refs(document)
        if ref.startswith(_REF_PREFIX) and ref.removeprefix(_REF_PREFIX) not in schemas
    }
