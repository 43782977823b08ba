"""The HTTP floor: a bare WSGI callable that reads the whole request body and answers a fixed body.

Run under Gunicorn gthread like tapeserve's gthread worker; nothing a real WSGI server does can
be faster on this machine, so it bounds what any Python WSGI server reaches at a given request
size. floor_asgi.py is the same floor for the async (ASGI) stack.
"""

from __future__ import annotations

ANSWER = b'{"outputs":[{"name":"y","shape":[1,10],"datatype":"FP32","data":[0,0,0,0,0,0,0,0,0,0]}]}'
_LENGTH = str(len(ANSWER))


def app(environ: dict, start_response) -> list[bytes]:
    """Read `CONTENT_LENGTH` bytes from wsgi.input, answer 200 with the fixed JSON body."""
    size = int(environ.get("CONTENT_LENGTH") or 0)
    environ["wsgi.input"].read(size)
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", _LENGTH)])
    return [ANSWER]
