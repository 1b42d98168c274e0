"""The floor: the barest asyncio Twilio → Gladia relay we could write. Parse, decode, forward; nothing else.

One asyncio WebSocket server (``websockets``, on uvloop like callscribe's uvicorn), per call one
``POST /v2/live`` (mono μ-law) and one WebSocket to the session. Every ``media`` message is parsed
with orjson, its payload base64-decoded and sent as one binary frame (no permessage-deflate), both tracks into the same mono
stream (like the Gladia blog: no track handling, no gap fill, no interleaving, no buffering, no
resume, no storage, no logging per call). Acknowledgements are read and dropped (they must be read:
an unread socket would stall the engine). On ``stop``: ``stop_recording``, close.

    python bench/baselines/floor_relay.py --port 5071 --gladia-url http://127.0.0.1:8765
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import os
from http import HTTPStatus

import httpx
import orjson
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

INIT = {"encoding": "wav/ulaw", "bit_depth": 8, "sample_rate": 8000, "channels": 1}
STOP = orjson.dumps({"type": "stop_recording"}).decode()


async def drain(ws) -> None:
    async for _ in ws:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5071)
    parser.add_argument("--gladia-url", default=os.environ.get("GLADIA_API_URL", "http://127.0.0.1:8765"))
    parser.add_argument("--gladia-key", default=os.environ.get("GLADIA_API_KEY", "fake-gladia-key"))
    args = parser.parse_args()
    headers = {"x-gladia-key": args.gladia_key, "content-type": "application/json"}

    async def handler(twilio) -> None:
        gladia = reader = None
        try:
            async for message in twilio:
                msg = orjson.loads(message)
                event = msg.get("event")
                if event == "media":
                    if gladia is not None:
                        await gladia.send(binascii.a2b_base64(msg["media"]["payload"]))
                elif event == "start":
                    resp = await client.post(
                        f"{args.gladia_url}/v2/live", content=orjson.dumps(INIT), headers=headers
                    )
                    resp.raise_for_status()
                    gladia = await connect(resp.json()["url"], max_size=None, compression=None)
                    reader = asyncio.create_task(drain(gladia))
                elif event == "stop":
                    break
        finally:
            if gladia is not None:
                try:
                    await gladia.send(STOP)
                    await asyncio.wait_for(reader, 5)
                except Exception:
                    pass
                await gladia.close()

    def health(connection, request):
        if request.path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        return None

    async def run() -> None:
        nonlocal client
        client = httpx.AsyncClient(timeout=30)
        async with serve(handler, args.host, args.port, process_request=health, max_size=1 << 20):
            print(f"floor relay on ws://{args.host}:{args.port}", flush=True)
            await asyncio.Future()

    client: httpx.AsyncClient
    try:
        import uvloop

        uvloop.run(run())
    except ImportError:  # pragma: no cover
        asyncio.run(run())


if __name__ == "__main__":
    main()
