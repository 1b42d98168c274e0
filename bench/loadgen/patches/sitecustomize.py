"""Bench-only A/B of a suggested change, without editing the gateway's files (other people own them).

On ``PYTHONPATH`` with ``CALLSCRIBE_BENCH_NO_DEFLATE=1``, the gateway's Gladia WebSocket client stops
offering permessage-deflate (μ-law audio barely compresses; deflating every 20 ms frame is pure CPU).
The same change as ``connect(..., compression=None)`` in ``callscribe/engines/gladia.py``
(suggested diff in bench/README.md). Used by ``bench/load.py`` system ``callscribe-nodeflate``.
"""

import os

if os.environ.get("CALLSCRIBE_BENCH_NO_DEFLATE") == "1":
    import websockets.asyncio.client as _client

    _connect = _client.connect

    class _NoDeflateConnect(_connect):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("compression", None)
            super().__init__(*args, **kwargs)

    _client.connect = _NoDeflateConnect
