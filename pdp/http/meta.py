"""The open routes about the service itself: liveness, readiness, the metrics and the
AuthZEN discovery document. No token (pdp.http.access.ACCESS: PUBLIC)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from pdp.http.deps import RuntimeDep
from pdp.http.wire import JSONResponse

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(runtime: RuntimeDep) -> Response:
    body = await run_in_threadpool(runtime.readiness)
    return JSONResponse(body, status_code=503 if body["problems"] else 200)


@router.get("/metrics")
async def metrics_endpoint(runtime: RuntimeDep) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    await run_in_threadpool(runtime.gauges)
    return Response(runtime.metrics.expose(), media_type=CONTENT_TYPE_LATEST)


# The configured public URL (PDP_PUBLIC_URL, or what `pdp serve` derived from its
# address), never the request's Host header: a forged Host must not put another
# server's URLs in the document a PEP trusts (create_app refuses to start without it).
@router.get("/.well-known/authzen-configuration")
async def authzen_configuration(runtime: RuntimeDep) -> dict[str, str]:
    base = str(runtime.settings.public_url)
    return {
        "policy_decision_point": base,
        "access_evaluation_endpoint": f"{base}/access/v1/evaluation",
        "access_evaluations_endpoint": f"{base}/access/v1/evaluations",
        "search_subject_endpoint": f"{base}/access/v1/search/subject",
        "search_resource_endpoint": f"{base}/access/v1/search/resource",
        "search_action_endpoint": f"{base}/access/v1/search/action",
    }
