"""Running the live server: build the engine and twin, serve the app until a signal arrives."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from avatar.pack import AvatarPack
from engines.base import EngineOptions, choose_auto, create_engine
from stream.app import create_app
from stream.assets import TwinAssets
from stream.config import ServeConfig
from stream.runtime import TwinRuntime

log = logging.getLogger(__name__)


def build_runtime(config: ServeConfig, avatar: Path, model: Path) -> TwinRuntime:
    """Load the artifact and the pack, warm the engine up, and prepare the twin (blocking)."""
    options = EngineOptions(threads=config.threads, spin=False)
    if config.engine == "auto":
        name, why = choose_auto(options)
        log.info("engine auto → %s: %s", name, why)
    engine = create_engine(config.engine, model, options)
    warmup_s = engine.warmup(config.max_batch)
    log.info("engine %s warmed up in %.2f s", engine.name, warmup_s)
    assets = TwinAssets.from_pack(AvatarPack.load(avatar), engine.spec)
    return TwinRuntime(engine, assets, engine.spec, config)


async def serve(config: ServeConfig, avatar: Path, model: Path, *,
                announce: Callable[[str], None] = print) -> None:
    """Serve until SIGINT or SIGTERM.

    ``announce`` receives the line ``twincast serving http://HOST:PORT/`` with the port actually bound (so
    ``--port 0`` works), and, when the operator token was generated here, the token once.
    """
    runtime = await asyncio.get_running_loop().run_in_executor(None, build_runtime, config, avatar, model)
    token = config.operator_token
    if token is None and not config.is_loopback:
        token = secrets.token_urlsafe(24)
        announce(f"operator token (shown once; set TWINCAST_OPERATOR_TOKEN to choose it): {token}")
    elif token is None:
        log.warning("no operator token set: operator endpoints are open to anyone on this machine (loopback only)")
    app = create_app(runtime, token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    announce(f"twincast serving http://{host}:{port}/")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
