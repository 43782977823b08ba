"""The ASGI face of the tapeserve app, which the async Gunicorn worker (uvicorn) serves.

The hot path - V2 inference - is answered natively on the event loop: the body is decoded, the
request queued in the model's batcher and awaited, the answer encoded, with no thread per
request. Every other endpoint is the Flask app, run in a small thread pool (a2wsgi), so the
whole API is defined once.
"""

from __future__ import annotations

from typing import Any

from a2wsgi import WSGIMiddleware
from flask import Flask


class TapeserveASGI:
    """ASGI 3 callable over the Flask app `flask_app` (`threads` run the Flask endpoints)."""

    def __init__(self, flask_app: Flask, threads: int = 8) -> None:
        self.flask_app = flask_app
        self._wsgi = WSGIMiddleware(flask_app, workers=max(1, threads))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        await self._wsgi(scope, receive, send)


async def _lifespan(receive: Any, send: Any) -> None:
    """Nothing to set up or tear down here: models load in the background at app creation."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def wrap(flask_app: Flask, threads: int = 8) -> TapeserveASGI:
    """The ASGI app the async worker serves for the Flask app Gunicorn loaded."""
    return TapeserveASGI(flask_app, threads)
