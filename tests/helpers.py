"""Helpers for tests: run the real ``twincast`` console script, and run ``twincast serve`` as a process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

TWINCAST = str(Path(sys.executable).with_name("twincast"))
OPERATOR_TOKEN = "test-operator-token"
AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


def run_cli(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``twincast ARGS…`` and return the finished process (raising on failure when ``check``)."""
    result = subprocess.run([TWINCAST, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"twincast {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def wait_until(probe: Callable[[], Any], timeout_s: float, *, every_s: float = 0.05, what: str = "") -> Any:
    """Call ``probe`` until it returns something truthy and return that; fail after ``timeout_s`` with the last
    value seen (tests wait on a condition with a deadline, never on a guessed sleep)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what or 'condition'} not met within {timeout_s} s; last value: {value!r}")
        time.sleep(every_s)


def http(method: str, url: str, body: Any = None, *, content_type: str = "application/json",
         headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, Any]:
    """A small blocking HTTP client; returns (status, decoded JSON or text)."""
    data = None
    if body is not None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, payload, kind = response.status, response.read().decode(), response.headers.get_content_type()
    except urllib.error.HTTPError as error:
        status, payload, kind = error.code, error.read().decode(), error.headers.get_content_type()
    return status, json.loads(payload) if kind == "application/json" and payload else payload


class ServerProcess:
    """``twincast serve|demo …`` in a subprocess; ``url`` is known once it announces its port.

    ``command`` replaces the ``twincast`` program (e.g. ``[python, -m, tests.stream.flaky_engine]``); ``cwd`` is
    the directory it runs in (the test's by default).
    """

    def __init__(self, *args: str, env: dict[str, str] | None = None, startup_s: float = 240,
                 command: list[str] | None = None, cwd: Path | None = None) -> None:
        self.args = args
        self.command = command or [TWINCAST]
        self.cwd = cwd
        self.env = {**os.environ, "TWINCAST_OPERATOR_TOKEN": OPERATOR_TOKEN, **(env or {})}
        self.token = self.env["TWINCAST_OPERATOR_TOKEN"]
        self.startup_s = startup_s
        self.url = ""
        self.lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> ServerProcess:
        self.process = subprocess.Popen([*self.command, *self.args], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, env=self.env, cwd=self.cwd)
        found = threading.Event()

        def reader() -> None:
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                self.lines.append(line.rstrip())
                match = re.search(r"twincast serving (http://\S+?)/?$", line.strip())
                if match and not self.url:
                    self.url = match.group(1).rstrip("/")
                    found.set()

        threading.Thread(target=reader, daemon=True).start()
        deadline = time.monotonic() + self.startup_s
        while not found.wait(0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise AssertionError("server did not start:\n" + "\n".join(self.lines[-40:]))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def auth(self) -> dict[str, str]:
        """The operator's Authorization header."""
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        """GET a path on the server (as the operator unless ``headers`` say otherwise)."""
        kwargs.setdefault("headers", self.auth)
        return http("GET", self.url + path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        """POST a JSON (or given content type) body to a path on the server, as the operator by default."""
        kwargs.setdefault("headers", self.auth)
        return http("POST", self.url + path, body, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        """DELETE a path on the server, as the operator by default."""
        kwargs.setdefault("headers", self.auth)
        return http("DELETE", self.url + path, **kwargs)


def measured(name: str, **numbers: Any) -> None:
    """Keep what a test measured under ``name`` in ``test-output/measured.json`` (the docs cite those numbers;
    tests assert their own thresholds)."""
    path = Path("test-output") / "measured.json"
    path.parent.mkdir(exist_ok=True)
    kept = json.loads(path.read_text()) if path.exists() else {}
    kept[name] = {key: round(value, 3) if isinstance(value, float) else value for key, value in numbers.items()}
    path.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")


def crop_box(pack: Path, rows: tuple[float, float], cols: tuple[float, float], base_index: int = 0
             ) -> tuple[slice, slice]:
    """A crop-space box of a pack's base frame mapped into frame pixels (its bounding box)."""
    import numpy as np

    from avatar.pack import AvatarPack

    loaded = AvatarPack.load(pack)
    matrix = np.asarray(loaded.array("base_transforms")[base_index], np.float64)
    crop = loaded.meta.crop_px
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    corners = np.array([[cols[0] * crop, rows[0] * crop, 1], [cols[1] * crop, rows[1] * crop, 1]]) @ inverse.T
    (x0, y0), (x1, y1) = corners.min(axis=0).astype(int), corners.max(axis=0).astype(int)
    return slice(int(y0), int(y1)), slice(int(x0), int(x1))


def mouth_and_upper_change(frames: Any, baseline: Any, pack: Path) -> tuple[Any, Any]:
    """Per-frame mean absolute change from ``baseline`` in the mouth box and in the upper-face box."""
    import numpy as np

    mouth = crop_box(pack, (0.62, 0.9), (0.3, 0.7))
    upper = crop_box(pack, (0.15, 0.45), (0.2, 0.8))
    stack = np.asarray(frames, np.float32)
    mouth_change = np.abs(stack[:, mouth[0], mouth[1]] - baseline[mouth]).mean(axis=(1, 2, 3))
    upper_change = np.abs(stack[:, upper[0], upper[1]] - baseline[upper]).mean(axis=(1, 2, 3))
    return mouth_change, upper_change
