from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.engines.fileserver import FileServer, ServerThread


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    """A real HTTP server on 127.0.0.1 serving generated files; see tests/engines/fileserver.py."""
    thread = ServerThread()
    server = thread.start()
    yield server
    thread.stop()
