"""The ASGI HTTP floor: a bare ASGI 3 app that reads the whole body and answers a fixed body.

Run under Gunicorn's uvicorn worker (`-k uvicorn_worker.UvicornWorker`: httptools and uvloop),
the stack of tapeserve's async worker; nothing a real server on that stack does can be faster on
this machine. The answer is floor_app.py's, so both floors send the same bytes.
"""

from __future__ import annotations

from floor_app import ANSWER

_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))],
}
_BODY = {"type": "http.response.body", "body": ANSWER}


async def app(scope: dict, receive, send) -> None:
    """Drain every `http.request` message, answer 200 with the fixed JSON body."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = message.get("more_body", False)
    await send(_START)
    await send(_BODY)
