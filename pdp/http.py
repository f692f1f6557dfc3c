"""Small HTTP helpers shared by the routes: the JSON response and the body reader."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from pdp.errors import PAYLOAD_TOO_LARGE, ApiError, bad_request, invalid


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON: 413 past `limit` bytes, 400 when it is not JSON."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, PAYLOAD_TOO_LARGE, f"request body over the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, PAYLOAD_TOO_LARGE,
                           f"request body over the limit of {limit} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise bad_request(f"malformed JSON: {error}") from None



M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], body: Any) -> M:
    """Validate a JSON body into `model`: 400 invalid_request naming the field."""
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise invalid(error) from None
