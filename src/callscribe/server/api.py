"""The REST API over stored calls: search, one call, its transcript in four formats, its events, delete.

Every route reads ``app.state.gateway.store`` (a :class:`callscribe.storage.Store`); without one they
answer 503. Errors are JSON: ``{"detail": "…"}``.
"""

from __future__ import annotations

import warnings
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from callscribe.server.auth import require
from callscribe.transcripts.formats import FORMATS, render

TranscriptFormat = Literal["json", "txt", "srt", "vtt"]
_ACCEPT = {  # Accept media type → format, for clients that negotiate instead of asking
    "text/vtt": "vtt",
    "application/x-subrip": "srt",
    "text/srt": "srt",
    "text/plain": "txt",
    "application/json": "json",
}


class ErrorBody(BaseModel):
    detail: str = Field(description="What went wrong, in one sentence.")


class CallSummary(BaseModel):
    """A stored call. Fields beyond these come from the store as they are."""

    model_config = ConfigDict(extra="allow")

    call_sid: str
    stream_sid: str | None = None
    status: str | None = Field(None, description="`live` until the call's end is stored, then `ended`")
    started_at: datetime | None = None
    ended_at: datetime | None = None
    end_reason: str | None = None
    duration: float | None = Field(None, description="seconds of audio")
    engine: str | None = None
    tracks: list[str] | None = None
    speakers: dict[str, str] | None = None
    custom_parameters: dict[str, Any] | None = None
    counters: dict[str, Any] | None = None
    utterance_count: int | None = Field(None, description="finals stored")
    last_event_id: str | None = None
    notes: dict[str, Any] | None = Field(
        None, description="end-of-call notes (talk time, triggers, redactions, topics…) once ended"
    )


class CallList(BaseModel):
    items: list[CallSummary]
    total: int = Field(description="calls matching the filters, ignoring limit/offset")
    limit: int
    offset: int


class Utterance(BaseModel):
    """The final transcript of one utterance."""

    model_config = ConfigDict(extra="allow")

    utterance_id: str
    speaker: str
    track: str | None = None
    text: str
    start: float = Field(description="seconds from the start of the call")
    end: float
    event_id: str | None = None
    received_at: float | None = Field(None, description="wall-clock time the engine produced it")
    redactions: list[Any] | None = None


class Transcript(BaseModel):
    call: CallSummary
    utterances: list[Utterance]


class StoredEvent(BaseModel):
    """One event as the live feeds send it (``event_to_dict``)."""

    model_config = ConfigDict(extra="allow")

    event_id: str
    type: str
    call_sid: str | None = None


class LiveCall(BaseModel):
    call_sid: str
    stream_sid: str
    tracks: list[str]
    speakers: dict[str, str]
    audio_seconds: float = Field(description="audio received so far on the longest track")


NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "No such call."}}
NO_STORE: dict[int | str, dict[str, Any]] = {503: {"model": ErrorBody, "description": "Storage is off."}}

router = APIRouter(prefix="/api", tags=["calls"], responses=NO_STORE)
CallSid = Annotated[str, Path(min_length=1, max_length=64, description="Twilio CallSid")]


def get_store(request: Request) -> Any:
    store = request.app.state.gateway.store
    if store is None:
        raise HTTPException(503, "storage is not configured on this gateway (DATABASE_URL)")
    return store


Store = Annotated[Any, Depends(get_store)]


async def _call_or_404(store: Any, call_sid: str) -> dict[str, Any]:
    call = await store.get_call(call_sid)
    if call is None:
        raise HTTPException(404, f"call {call_sid!r} not found")
    return call


@router.get("/calls", response_model=CallList)
async def list_calls(
    store: Store,
    since: Annotated[datetime | None, Query(description="started at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="started before (ISO 8601)")] = None,
    status: Annotated[str | None, Query(max_length=32, description="e.g. active, ended")] = None,
    speaker: Annotated[str | None, Query(max_length=64, description="has an utterance by")] = None,
    q: Annotated[str | None, Query(max_length=200, description="full-text search in finals")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """Stored calls, newest first, filtered."""
    if since and until and since > until:
        raise HTTPException(422, "'since' is after 'until'")
    items, total = await store.list_calls(
        since=since, until=until, status=status, speaker=speaker, q=q or None, limit=limit, offset=offset
    )
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.get("/live", response_model=list[LiveCall], tags=["live"])
async def live_calls(request: Request) -> list[dict[str, Any]]:
    """Calls streaming to this gateway instance right now (works without storage)."""
    out = []
    for media in list(request.app.state.gateway.calls):
        bridge = media.bridge
        call = bridge.stream.call
        if call is None or bridge.done:
            continue
        out.append(
            {
                "call_sid": call.call_sid,
                "stream_sid": call.stream_sid,
                "tracks": [str(t) for t in call.tracks],
                "speakers": {str(t): call.speaker(t) for t in call.tracks},
                "audio_seconds": round(bridge.stream.duration(), 2),
            }
        )
    return out


@router.get("/calls/{call_sid}", response_model=CallSummary, responses=NOT_FOUND)
async def get_call(store: Store, call_sid: CallSid) -> dict[str, Any]:
    """One stored call."""
    return await _call_or_404(store, call_sid)


@router.get("/calls/{call_sid}/notes", responses=NOT_FOUND | {409: {"description": "The call has not ended."}})
async def get_notes(store: Store, call_sid: CallSid) -> dict[str, Any]:
    """The call's end-of-call notes: talk time, silence and overlap, triggers, redactions, topics."""
    call = await _call_or_404(store, call_sid)
    if call.get("notes") is None:
        raise HTTPException(409, f"call {call_sid!r} has no notes yet (status {call.get('status')})")
    return dict(call["notes"])


def _negotiate(accept: str | None) -> str:
    for part in (accept or "").split(","):
        fmt = _ACCEPT.get(part.split(";")[0].strip().lower())
        if fmt:
            return fmt
    return "json"


_TRANSCRIPT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **NOT_FOUND,
    200: {
        "model": Transcript,
        "description": "The transcript: JSON, labelled plain text, SubRip or WebVTT.",
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            "application/x-subrip": {"schema": {"type": "string"}},
            "text/vtt": {"schema": {"type": "string"}},
        },
    },
}


async def _transcript(store: Any, call_sid: str, fmt: str) -> Response:
    call = await _call_or_404(store, call_sid)
    utterances = await store.utterances(call_sid)
    headers = {}
    if fmt != "json":  # a download gets a sensible file name; browsers still show it inline
        headers["Content-Disposition"] = f'inline; filename="{call_sid}.{fmt}"'
    return Response(render(fmt, utterances, call), media_type=FORMATS[fmt], headers=headers)


@router.get(
    "/calls/{call_sid}/transcript",
    response_class=Response,
    responses=_TRANSCRIPT_RESPONSES,
)
async def get_transcript(
    store: Store,
    call_sid: CallSid,
    format: Annotated[TranscriptFormat | None, Query(description="default: from Accept, else json")] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """The call's final utterances in speaking order, labelled by speaker, with times."""
    return await _transcript(store, call_sid, format or _negotiate(accept))


@router.get(
    "/calls/{call_sid}/transcript.{fmt}",
    response_class=Response,
    responses=_TRANSCRIPT_RESPONSES,
)
async def get_transcript_file(store: Store, call_sid: CallSid, fmt: TranscriptFormat) -> Response:
    """The transcript by file suffix: ``transcript.srt``, ``.vtt``, ``.txt`` or ``.json``."""
    return await _transcript(store, call_sid, fmt)


@router.get("/calls/{call_sid}/events", response_model=list[StoredEvent], responses=NOT_FOUND)
async def get_events(store: Store, call_sid: CallSid) -> list[dict[str, Any]]:
    """Every stored event of the call, in order (partials are not stored)."""
    await _call_or_404(store, call_sid)
    return await store.call_events(call_sid)


@router.delete(
    "/calls/{call_sid}",
    status_code=204,
    response_class=Response,
    responses=NOT_FOUND,
    dependencies=[Depends(require("admin"))],
)
async def delete_call(store: Store, call_sid: CallSid) -> Response:
    """Delete the call, its utterances and its events."""
    if not await store.delete_call(call_sid):
        raise HTTPException(404, f"call {call_sid!r} not found")
    return Response(status_code=204)


def unique_operation_ids(app: FastAPI) -> None:
    """Make ``app.openapi()`` give every operation its own id (a valid document).

    FastAPI gives a route serving several methods (``/twiml``: GET and POST) one id for all of
    them; OpenAPI requires ids to be unique, so repeats get the method appended.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            with warnings.catch_warnings():  # FastAPI warns about the repeats fixed below
                warnings.simplefilter("ignore", UserWarning)
                schema = build()
            seen: set[str] = set()
            for path in schema.get("paths", {}).values():
                for method, operation in path.items():
                    op_id = operation.get("operationId")
                    if op_id in seen:
                        operation["operationId"] = f"{op_id}_{method}"
                    seen.add(operation.get("operationId"))
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
