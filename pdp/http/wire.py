"""Small HTTP helpers shared by the routes: the JSON response and the body reader."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import orjson
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from pdp.model.errors import PAYLOAD_TOO_LARGE, Refused, bad_request, invalid


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON: 413 past `limit` bytes, 400 when it is not JSON."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise Refused(PAYLOAD_TOO_LARGE, f"request body over the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Refused(PAYLOAD_TOO_LARGE,
                           f"request body over the limit of {limit} bytes")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise bad_request(f"malformed JSON: {error}") from None
    if isinstance(value, dict | list):
        # orjson keeps the last of duplicate keys; a body that says two things is refused
        # (a second, stricter pass: a few microseconds on a decision request)
        try:
            _PAIRS.decode(body.decode())
        except DuplicateKey as error:
            raise bad_request(f"malformed JSON: duplicate key {error.key!r}") from None
        except RecursionError:
            raise bad_request("malformed JSON: nested too deeply") from None
    return value


class DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key[:64]


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return found


_PAIRS = json.JSONDecoder(object_pairs_hook=_unique_keys)


M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], body: Any) -> M:
    """Validate a JSON body into `model`: 400 invalid_request naming the field."""
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise invalid(error) from None
