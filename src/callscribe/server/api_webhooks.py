"""The webhook delivery log: list deliveries with their attempts, re-queue a dead one.

Like :mod:`callscribe.server.api`, every route reads ``app.state.gateway.store`` (503 without one).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from callscribe.server.auth import require
from callscribe.storage.models import WebhookAttempt, WebhookOutbox

DeliveryStatus = Literal["pending", "delivered", "dead"]


class ErrorBody(BaseModel):
    detail: str


class Attempt(BaseModel):
    attempt: int = Field(description="1 for the first attempt (again 1 after a manual retry)")
    at: datetime
    status_code: int | None = Field(description="the endpoint's answer; null on timeout or network error")
    error: str | None
    duration_ms: float | None


class Delivery(BaseModel):
    """One event to one endpoint."""

    id: int = Field(description="also sent as the Callscribe-Delivery header")
    endpoint: str
    event_id: str = Field(description="the body's `id`")
    event_type: str
    call_sid: str | None
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None = Field(description="when it is due (pending only)")
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    log: list[Attempt] = Field(description="every attempt, oldest first")


class DeliveryList(BaseModel):
    items: list[Delivery]
    total: int = Field(description="deliveries matching the filters, ignoring limit/offset")
    limit: int
    offset: int


NO_STORE: dict[int | str, dict[str, Any]] = {503: {"model": ErrorBody, "description": "Storage is off."}}
router = APIRouter(prefix="/api/webhooks", tags=["webhooks"], responses=NO_STORE)


def get_store(request: Request) -> Any:
    store = getattr(request.app.state.gateway, "store", None)
    if store is None:
        raise HTTPException(503, "storage is not configured on this gateway (DATABASE_URL)")
    return store


Store = Annotated[Any, Depends(get_store)]


async def _with_log(session: AsyncSession, rows: list[WebhookOutbox]) -> list[Delivery]:
    logs: dict[int, list[Attempt]] = {r.id: [] for r in rows}
    if rows:
        query = (
            select(WebhookAttempt)
            .where(WebhookAttempt.outbox_id.in_(logs))
            .order_by(WebhookAttempt.outbox_id, WebhookAttempt.id)
        )
        for a in await session.scalars(query):
            logs[a.outbox_id].append(
                Attempt(
                    attempt=a.attempt,
                    at=a.at,
                    status_code=a.status_code,
                    error=a.error,
                    duration_ms=a.duration_ms,
                )
            )
    return [
        Delivery(
            id=r.id,
            endpoint=r.endpoint,
            event_id=r.event_id,
            event_type=r.event_type,
            call_sid=r.call_sid,
            status=r.status,  # type: ignore[arg-type]
            attempts=r.attempts,
            next_attempt_at=r.next_attempt_at if r.status == "pending" else None,
            last_error=r.last_error,
            created_at=r.created_at,
            delivered_at=r.delivered_at,
            log=logs[r.id],
        )
        for r in rows
    ]


@router.get("/deliveries", response_model=DeliveryList)
async def list_deliveries(
    store: Store,
    status: DeliveryStatus | None = None,
    call_sid: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> DeliveryList:
    """Webhook deliveries, newest first, each with its log of attempts."""
    where = []
    if status:
        where.append(WebhookOutbox.status == status)
    if call_sid:
        where.append(WebhookOutbox.call_sid == call_sid)
    async with store.sessionmaker() as session:
        total = await session.scalar(select(func.count()).select_from(WebhookOutbox).where(*where))
        query = select(WebhookOutbox).where(*where).order_by(WebhookOutbox.id.desc())
        rows = list(await session.scalars(query.limit(limit).offset(offset)))
        items = await _with_log(session, rows)
    return DeliveryList(items=items, total=int(total or 0), limit=limit, offset=offset)


@router.post(
    "/deliveries/{delivery_id}/retry",
    response_model=Delivery,
    responses={
        404: {"model": ErrorBody, "description": "No such delivery."},
        409: {"model": ErrorBody, "description": "The delivery is not dead."},
    },
    dependencies=[Depends(require("admin"))],
)
async def retry_delivery(store: Store, delivery_id: Annotated[int, Path(ge=1)]) -> Delivery:
    """Re-queue a dead delivery, due now, with a fresh budget of attempts (its log is kept)."""
    async with store.sessionmaker() as session:
        async with session.begin():
            result = await session.execute(
                update(WebhookOutbox)
                .where(WebhookOutbox.id == delivery_id, WebhookOutbox.status == "dead")
                .values(status="pending", attempts=0, next_attempt_at=datetime.now(UTC))
            )
        row = await session.get(WebhookOutbox, delivery_id, populate_existing=True)
        if row is None:
            raise HTTPException(404, "no such delivery")
        if result.rowcount == 0:
            raise HTTPException(
                409, f"delivery {delivery_id} is {row.status}; only a dead one can be retried"
            )
        return (await _with_log(session, [row]))[0]
