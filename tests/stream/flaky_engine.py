"""``twincast serve`` whose engine fails on demand: the one fault the tests inject by hand.

A real ONNX Runtime failure cannot be triggered at will, so the engine-fault tests run the real server, the real
ONNX Runtime engine and the real render worker, and wrap the engine: while the control file exists, every call
raises ``InjectedEngineFault`` instead of rendering (or, when the file says ``hang``, blocks until it is removed,
as a wedged GPU call would); once it is removed the engine renders again.

Run as ``python -m tests.stream.flaky_engine --control FILE --avatar PACK --model twin.onnx [--pose loop]``; it
announces itself like ``twincast serve`` (``twincast serving http://…/``) and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Engine
from stream.config import ServeConfig
from stream.server import TwinSource, build_runtime, serve_runtime


class InjectedEngineFault(RuntimeError):
    """What the wrapped engine raises while the control file exists."""


class FlakyEngine:
    """A real engine that raises (or hangs) instead of rendering while ``control`` exists (everything else is the
    engine's)."""

    def __init__(self, engine: Engine, control: Path) -> None:
        self.engine = engine
        self.control = control
        self.failed_calls = 0

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        if self.control.exists() and self.control.read_text().strip() == "hang":
            while self.control.exists():
                time.sleep(0.05)
        elif self.control.exists():
            self.failed_calls += 1
            raise InjectedEngineFault(f"injected engine failure #{self.failed_calls} (the test's control file "
                                      "exists)")
        return self.engine(inputs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--control", type=Path, required=True, help="the engine fails while this file exists")
    parser.add_argument("--avatar", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--pose", default="loop")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServeConfig(port=0, pose=args.pose, engine="onnxruntime",
                         operator_token=os.environ.get("TWINCAST_OPERATOR_TOKEN"))
    runtime = build_runtime(config, [TwinSource("default", args.avatar, args.model)])
    for key, engine in list(runtime.engines.items()):
        runtime.engines[key] = FlakyEngine(engine, args.control)  # type: ignore[assignment]
    asyncio.run(serve_runtime(runtime, config, announce=lambda line: print(line, flush=True)))


if __name__ == "__main__":
    main()
