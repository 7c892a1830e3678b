"""Fixtures: a running twincast server (``TWINCAST_URL``, ``TWINCAST_OPERATOR_TOKEN``) and a fresh session of it
per test, so no test hears another's speech.

The main suite runs these tests in this environment against its own ``twincast serve``
(``tests/test_pipecat_integration.py``); to run them by hand, point ``TWINCAST_URL`` at a server.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from loguru import logger


@dataclass(frozen=True)
class Twincast:
    """A twincast server and the session a test drives."""

    url: str
    token: str
    session: str

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """Call the operator API; returns (status, decoded JSON or None)."""
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Authorization": f"Bearer {self.token}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                payload = response.read()
                return response.status, json.loads(payload) if payload else None
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def stats(self) -> dict[str, Any]:
        """This session's entry of ``/api/stats``."""
        status, body = self.api("GET", "/api/stats")
        assert status == 200, body
        return dict(body["sessions"][self.session])


@pytest.fixture
def twincast() -> Iterator[Twincast]:
    """A new session on the server named by ``TWINCAST_URL``, removed after the test."""
    url, token = os.environ.get("TWINCAST_URL"), os.environ.get("TWINCAST_OPERATOR_TOKEN")
    if not url or not token:
        pytest.fail("TWINCAST_URL and TWINCAST_OPERATOR_TOKEN must name a running twincast server (the main suite's "
                    "tests/test_pipecat_integration.py runs these tests against its own)")
    server = Twincast(url, token, "")
    session = f"pipecat-{uuid.uuid4().hex[:8]}"
    status, body = server.api("POST", "/api/sessions", {"id": session})
    assert status == 201, body
    yield Twincast(url, token, session)
    server.api("DELETE", f"/api/sessions/{session}")


def pytest_configure(config: pytest.Config) -> None:
    """pipecat logs every frame at DEBUG; keep its warnings and errors."""
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
