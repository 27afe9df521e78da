"""Liveness, readiness and metrics: unauthenticated, for load balancers and Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.db import migration_state
from fleetkeep.identity.service import count_users_by_state

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    engine: Engine = request.app.state.engine
    try:
        current, head = migration_state(engine)
    except Exception as exc:  # any database failure means "not ready"
        return JSONResponse(
            {"status": "unavailable", "database": f"unreachable: {type(exc).__name__}"}, 503
        )
    if current != head:
        return JSONResponse(
            {
                "status": "unavailable",
                "database": "ok",
                "migrations": f"at {current}, code expects {head}",
            },
            503,
        )
    return JSONResponse({"status": "ok", "database": "ok", "migrations": head})


@router.get("/metrics")
def metrics(request: Request) -> Response:
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )


class DomainCollector(Collector):
    """Counts read from the database at scrape time, so every replica reports the truth."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def collect(self) -> list[GaugeMetricFamily]:
        users = GaugeMetricFamily("fleetkeep_users", "Users by state.", labels=["state"])
        try:
            with self.factory() as session:
                for state, n in count_users_by_state(session).items():
                    users.add_metric([state], n)
        except Exception:
            return []
        return [users]
