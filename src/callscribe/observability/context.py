"""The call a piece of code works for, in context variables: every log line can name it.

``bind_call(call_sid, stream_sid)`` sets them for the current context; asyncio tasks created
afterwards (``asyncio.create_task`` copies the context) inherit them, so binding once in the
``/media`` handler when the stream starts covers the bridge's pump, start and finish tasks::

    binding = bind_call(call.call_sid, call.stream_sid)   # in the handler's task
    ...
    binding.reset()                                       # same task, e.g. in ``finally``

or, for a block: ``with bind_call(sid, stream): ...``. Threads do not inherit context variables
(``loop.run_in_executor`` does not copy them; ``asyncio.to_thread`` does).
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from types import TracebackType

CALL_SID: ContextVar[str | None] = ContextVar("callscribe_call_sid", default=None)
STREAM_SID: ContextVar[str | None] = ContextVar("callscribe_stream_sid", default=None)


class CallBinding:
    """The tokens of one :func:`bind_call`; :meth:`reset` (or leaving the ``with``) restores."""

    __slots__ = ("_call", "_done", "_stream")

    def __init__(self, call: Token[str | None], stream: Token[str | None]) -> None:
        self._call, self._stream, self._done = call, stream, False

    def reset(self) -> None:
        """Restore the previous values. Must run in the context that bound (the same task)."""
        if self._done:
            return
        self._done = True
        STREAM_SID.reset(self._stream)
        CALL_SID.reset(self._call)

    def __enter__(self) -> CallBinding:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.reset()


def bind_call(call_sid: str | None, stream_sid: str | None = None) -> CallBinding:
    """Bind the call (and stream) SID to the current context, now; returns the binding to undo it."""
    return CallBinding(CALL_SID.set(call_sid or None), STREAM_SID.set(stream_sid or None))


def current_call() -> tuple[str | None, str | None]:
    """``(call_sid, stream_sid)`` bound in the current context (``None`` when not bound)."""
    return CALL_SID.get(), STREAM_SID.get()
