"""The gateway as an importable ASGI app, for gunicorn's workers (``callscribe.server.asgi:app``).

Each worker process imports this module once and builds its own gateway from the environment
(and ``CALLSCRIBE_ENV_FILE``, default ``.env``).
"""

from __future__ import annotations

import os

from callscribe.config import load_settings
from callscribe.logs import setup_logging
from callscribe.server.app import build_app

settings = load_settings(os.environ.get("CALLSCRIBE_ENV_FILE", ".env"))
setup_logging(settings.log_level, settings.log_format, redact=settings.redact)
app = build_app(settings)
