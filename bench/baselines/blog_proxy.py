"""The blog-style baseline: the Gladia blog's Flask + flask-sock proxy ("Live transcription made simple
with Twilio, Python & Gladia", July 2025), as written there, runnable against the fake Gladia server.

What is the blog's: Flask dev server (``app.run``, one thread per connection), flask-sock route
``/media``, a new asyncio event loop per connection, ``websockets`` client to Gladia, a blocking
``ws.receive()`` per Twilio message, ``json.loads`` + ``base64.b64decode`` and **one binary send per
20 ms frame**, then a 1 ms ``wait_for(recv)`` poll of Gladia after every frame, finals printed.
The init body is the blog's (``wav/ulaw``, 8 bit, 8 kHz, 1 channel).

Two changes, both needed to run it at all, both noted in bench/README.md:
- the session is created per call (the blog's text: "You only need to create one per call session";
  its sample creates one at start-up, and a live session serves one socket at a time), with
  ``requests`` exactly like the blog's ``create_session``;
- ``GLADIA_API_URL`` points it at the fake server; a ``stop`` message ends the loop and the sockets
  close (the blog never sends ``stop_recording``; neither does this).

    GLADIA_API_URL=http://127.0.0.1:8765 GLADIA_API_KEY=fake-gladia-key HTTP_PORT=5072 \
        python bench/baselines/blog_proxy.py
"""

import asyncio
import base64
import json
import logging
import os

import requests
import websockets
from flask import Flask, request
from flask_sock import ConnectionClosed, Sock

GLADIA_KEY = os.getenv("GLADIA_API_KEY")
GLADIA_INIT = os.getenv("GLADIA_API_URL", "https://api.gladia.io").rstrip("/") + "/v2/live"
HTTP_PORT = int(os.getenv("HTTP_PORT", "5000"))

logging.basicConfig(level=logging.INFO)
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log line per request
app = Flask(__name__)
sock = Sock(app)


def create_session():
    """Initialize a Gladia real-time transcription session."""
    payload = {
        "encoding": "wav/ulaw",  # μ-law!
        "bit_depth": 8,  # 8-bit μ-law
        "sample_rate": 8000,  # matches Twilio
        "channels": 1,
    }
    r = requests.post(
        GLADIA_INIT,
        json=payload,
        headers={"X-Gladia-Key": GLADIA_KEY, "Content-Type": "application/json"},
        timeout=10,
    )
    r.raise_for_status()
    data = r.json()
    print("🛰  Gladia session ID:", data["id"])
    return data["url"]  # wss://api.gladia.io/v2/live?token=...


@app.route("/healthz")
def healthz():
    return "ok\n"


@sock.route("/media")
def media(ws):
    client_info = f"{request.remote_addr}:{request.environ.get('REMOTE_PORT', '?')}"
    logging.info(f"🔌 Twilio WebSocket connected from {client_info}")
    handle_websocket(ws)


def handle_websocket(ws):
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(bridge(ws))
    finally:
        loop.close()


async def bridge(ws):
    gladia_url = create_session()
    async with websockets.connect(gladia_url) as gladia_ws:
        while True:
            try:
                ws_message = ws.receive()
            except ConnectionClosed:
                break
            await process_message(ws_message, gladia_ws)


async def process_message(ws_message, gladia_ws):
    try:
        data = json.loads(ws_message)
        if data.get("event") != "media":
            return
        mulaw = base64.b64decode(data["media"]["payload"])
        await gladia_ws.send(mulaw)
        try:
            while True:
                resp = await asyncio.wait_for(gladia_ws.recv(), 0.001)
                handle_gladia(resp)
        except TimeoutError:
            pass
    except Exception as e:
        logging.error(f"Error processing message: {e}")


def handle_gladia(msg):
    m = json.loads(msg)
    if m["type"] == "transcript" and m["data"]["is_final"]:
        print("📝 Transcript:", m["data"]["utterance"]["text"])


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=HTTP_PORT, threaded=True)
