"""The agent's live page: static HTML, CSS and JavaScript (no build step) served at ``/``."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    """The live page; its CSS and JavaScript are under ``/static/``."""
    # no-cache: the page is tiny and must pick up a new app.js after an upgrade
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})
