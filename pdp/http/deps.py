"""What a route is given: the process's runtime and the caller the access gate let in.

Routes are module-level (`router = APIRouter()` in each resource module) and take these
as FastAPI dependencies, so each can be imported and tested on its own:

    @router.get("/v1/grants")
    async def grants(runtime: RuntimeDep, caller: CallerDep) -> ...
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from pdp.model.callers import Caller
from pdp.service.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    """The runtime `create_app` was built with (app.state.runtime). Async, as
    `get_caller`: a plain function would be run in a worker thread, on every request."""
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_caller(request: Request) -> Caller:
    """The caller the access gate (pdp.http.access) authenticated and authorised for this
    route; only routes that the table does not open take it."""
    caller = request.scope.get("state", {}).get("caller")
    if not isinstance(caller, Caller):  # a route that needs a caller, opened by mistake
        raise RuntimeError(f"no caller for {request.method} {request.url.path}: the access "
                           "table opens a route that needs one")
    return caller


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
CallerDep = Annotated[Caller, Depends(get_caller)]
