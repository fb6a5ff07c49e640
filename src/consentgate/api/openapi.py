"""The OpenAPI document as clients and contract testers read it.

Most routes read their own body (``deps.json_body`` then ``deps.parse``: malformed JSON is a
400, the model's rules a 422, and the hot paths skip FastAPI's body machinery), so FastAPI
cannot see what they accept. :func:`request_body` documents it on the route; :func:`install`
completes the generated document: the request models those routes name are added to
``components``, and every operation documents what every error really is, an RFC 9457
``application/problem+json`` (FastAPI would otherwise claim its own 422 body, and leave 401,
403, 404 and 413 undocumented). The schemathesis suite checks the live service against it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from consentgate.api import models as wire_models

PROBLEM_JSON = "application/problem+json"
_REF = "#/components/schemas/"

PROBLEM: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details; `field` names the offending input, if any.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "field": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "detail": {"type": "string"}},
            },
        },
    },
}
_PROBLEM_CONTENT = {PROBLEM_JSON: {"schema": {"$ref": f"{_REF}Problem"}}}


def request_body(
    *models: type[BaseModel],
    schema: dict[str, Any] | None = None,
    media_types: tuple[str, ...] = ("application/json",),
    description: str | None = None,
) -> dict[str, Any]:
    """``openapi_extra`` for a route that parses its own body: one of ``models`` (by
    reference; :func:`install` adds them to ``components``), or a literal ``schema``."""
    if schema is None:
        refs = [{"$ref": f"{_REF}{m.__name__}"} for m in models]
        schema = refs[0] if len(refs) == 1 else {"oneOf": refs}
    body: dict[str, Any] = {
        "required": True,
        "content": {media: {"schema": schema} for media in media_types},
    }
    if description:
        body["description"] = description
    return {"requestBody": body}


def install(app: FastAPI) -> None:
    """Complete the generated document once, on first use (``app.openapi`` caches it)."""
    generate: Callable[[], dict[str, Any]] = app.openapi
    completed: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        if not completed:
            completed.append(complete(generate()))
        return completed[0]

    app.openapi = openapi  # type: ignore[method-assign]


def complete(doc: dict[str, Any]) -> dict[str, Any]:
    schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM
    for operation in _operations(doc):
        responses: dict[str, Any] = operation.setdefault("responses", {})
        for status, response in responses.items():
            if status.startswith("4"):
                response["content"] = _PROBLEM_CONTENT
        responses.setdefault(
            "4XX", {"description": "refused: an RFC 9457 problem", "content": _PROBLEM_CONTENT}
        )
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's, never sent
        schemas.pop(name, None)
    _add_referenced_models(doc, schemas)
    return doc


def _operations(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for item in doc.get("paths", {}).values():
        for method, operation in item.items():
            if method in {"get", "put", "post", "delete", "patch"}:
                yield operation


def _add_referenced_models(doc: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Every ``#/components/schemas/X`` the document names exists: X is a wire model."""
    while missing := sorted(_refs(doc) - schemas.keys()):
        for name in missing:
            model = getattr(wire_models, name, None)
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise LookupError(f"OpenAPI names {name}, which is not a wire model")
            schema = model.model_json_schema(ref_template=_REF + "{model}", mode="validation")
            for sub_name, sub in schema.pop("$defs", {}).items():
                schemas.setdefault(sub_name, sub)
            schemas[name] = schema


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str) and ref.startswith(_REF):
                found.add(ref[len(_REF) :])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found
