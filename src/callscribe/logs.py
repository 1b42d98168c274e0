"""Logging set-up for the command line: one readable line per record, on stderr."""

from __future__ import annotations

import logging


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    # websockets logs every handshake failure at ERROR with a traceback; ours is more useful.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # "setup plugin" lines on every start
