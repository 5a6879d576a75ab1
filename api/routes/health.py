"""/healthz (alive), /readyz (Postgres, index, LLM), /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from api.auth import CallerDep
from api.deps import StateDep
from api.metrics import REGISTRY
from api.state import AppState
from query_engine.tools.guard import REGISTRY as TOOL_REGISTRY

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


def _checks(state: AppState) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        with state.sessions.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["postgres"] = "ok"
    except Exception as exc:  # any failure is reported, not raised
        checks["postgres"] = f"error: {type(exc).__name__}"
    try:
        counts = {s.name: state.index.count(s.name) for s in state.specs}
        checks["index"] = "ok" if any(counts.values()) else "empty: run an ingest"
    except Exception as exc:
        checks["index"] = f"error: {type(exc).__name__}"
    checks["llm"] = "ok" if state.llm_reachable() else f"unreachable at {state.llm_base_url}"
    return checks


@router.get("/readyz")
async def readyz(state: StateDep) -> JSONResponse:
    """Ready when Postgres, the index and the LLM all answer; 503 lists what does not."""
    checks = await run_in_threadpool(_checks, state)
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics")
def metrics(_: CallerDep) -> Response:
    """Prometheus exposition: stage histograms and counters (any signed-in caller; Prometheus sends a key)."""
    return Response(generate_latest(REGISTRY) + generate_latest(TOOL_REGISTRY), media_type=CONTENT_TYPE_LATEST)
