"""Fixtures shared by every test area."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.server import RunningServer, start_server


@pytest.fixture
def tapeserve_server() -> Iterator[Callable[..., RunningServer]]:
    """Factory: `tapeserve_server(repo, workers=2, extra_args=[...])` starts a real Gunicorn
    server (see tests.support.server.start_server) and stops it at teardown."""
    started: list[RunningServer] = []

    def start(repository, **options) -> RunningServer:
        server = start_server(repository, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
