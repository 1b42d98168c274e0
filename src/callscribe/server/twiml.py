"""The voice webhook's answer: <Start><Stream> to our /media, then what keeps the call going.

Built with the ``twilio`` package's TwiML builders, never by string formatting.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from twilio.twiml.voice_response import Start, VoiceResponse

from callscribe.config import Settings

MEDIA_PATH = "/media"
# A <Parameter>'s name + value must stay under 500 characters (protocols.md §1.2).
_PARAM_LIMIT = 499


def stream_url(base_url: str) -> str:
    """The ``wss://`` (or ``ws://`` for plain http) URL of /media under ``base_url``."""
    parts = urlsplit(base_url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/") + MEDIA_PATH
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def build_twiml(
    settings: Settings,
    base_url: str,
    extra_parameters: dict[str, str] | None = None,
    *,
    stream: bool = True,
) -> str:
    """TwiML that streams the call to ``base_url``'s /media and then continues as configured.

    ``stream=False`` (the gateway is full or draining) answers per ``OVER_CAPACITY``: the call goes
    on untranscribed ('no-stream'), or is rejected as busy ('refuse').
    """
    response = VoiceResponse()
    if not stream:
        if settings.over_capacity == "refuse":
            response.reject(reason="busy")
            return str(response)
        _continue(settings, response)
        return str(response)
    start = Start()
    stream = start.stream(
        url=stream_url(base_url),
        name=settings.stream_name,
        track=settings.stream_track,
        status_callback=str(settings.stream_status_callback) if settings.stream_status_callback else None,
    )
    for name, value in {**settings.stream_parameters, **(extra_parameters or {})}.items():
        if value and len(name) + len(value) <= _PARAM_LIMIT:
            stream.parameter(name=name, value=value)
    response.append(start)
    _continue(settings, response)
    return str(response)


def _continue(settings: Settings, response: VoiceResponse) -> None:
    kind, _, arg = settings.twiml_continue.partition(":")
    if kind == "dial":
        response.dial(arg)
    elif kind == "redirect":
        response.redirect(arg)
    else:  # without something after <Start>, Twilio hangs up at once
        response.pause(length=int(arg))
