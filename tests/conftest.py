"""Fixtures shared by every test area."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

from tests.support.server import RunningServer, start_server

# Tests write only under temp folders: hypothesis keeps neither its example database nor its
# cache in the checkout.
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="tapeserve-hypothesis-"))
settings.register_profile("tapeserve", database=None)
settings.load_profile("tapeserve")


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
