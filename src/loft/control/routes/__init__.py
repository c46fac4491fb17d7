"""The API's routes, one module per resource. Each only translates: it checks who calls,
turns the request into a typed call on the records, accounts or node, and the answer
into its typed body. The error answers every route may give are :data:`ERRORS`."""

from __future__ import annotations

from typing import Any

from loft.api import ErrorAnswer

__all__ = ["ERRORS", "RAW_ERRORS", "errors", "raw_errors"]

_WHY = {
    400: "The request makes no sense as a whole",
    401: "No bearer token, or not a live one",
    403: "Not allowed to this caller, or over a quota",
    404: "No such thing, or not the caller's",
    409: "A name taken, or a state that does not allow it",
    413: "The request body is over its limit",
    422: "A field outside its rules",
    501: "Not served by this version",
    503: "The node agent did not answer in time",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI descriptions of these error answers (all ``{"error", "hint"}``)."""
    return {s: {"model": ErrorAnswer, "description": _WHY[s]} for s in statuses}


def raw_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The same for a route whose own answer is not JSON (a stream, a file): the error
    bodies are still JSON, so they are described as such explicitly."""
    ref = {"schema": {"$ref": "#/components/schemas/ErrorAnswer"}}
    return {s: {"content": {"application/json": ref}, "description": _WHY[s]} for s in statuses}


#: The errors any authenticated route may answer.
ERRORS = errors(400, 401, 403, 404, 413, 422, 503)
#: The same, for routes that answer something other than JSON.
RAW_ERRORS = raw_errors(400, 401, 403, 404, 413, 422, 503)
