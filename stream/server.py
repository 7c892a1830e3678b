"""Running the live server: build the engines and twins, serve the app until a signal arrives."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import signal
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import WSCloseCode, web

from avatar.audio import MelSpec
from avatar.pack import AvatarPack
from avatar.speech import Voice
from engines.base import Engine, EngineOptions, create_engine
from export.spec import resolve_artifact
from stream.app import create_app
from stream.assets import TwinAssets
from stream.canvas import Background, canvas_size
from stream.config import ServeConfig
from stream.runtime import TwinRuntime
from stream.session import Twin
from stream.tts import TTS_FAILURES, make_tts
from twincast.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TwinSource:
    """Where a twin comes from: a name, its avatar pack and its model artifact."""

    name: str
    pack: Path
    model: Path

    @classmethod
    def parse(cls, text: str) -> TwinSource:
        """Read ``NAME=PACK,MODEL`` (the ``--twin`` flag).

        Raises:
            InputError: the text is not in that form.
        """
        match = re.fullmatch(r"([A-Za-z0-9_\-]{1,40})=([^,]+),(.+)", text)
        if not match:
            raise InputError(f"--twin {text!r} must look like NAME=PACK_DIR,MODEL.onnx")
        return cls(match.group(1), Path(match.group(2)), Path(match.group(3)))


def build_runtime(config: ServeConfig, sources: list[TwinSource]) -> TwinRuntime:
    """Load each artifact once (twins may share one), warm the engines up, prepare the twins (blocking)."""
    options = EngineOptions(threads=config.threads, spin=False, max_batch=max(8, config.max_batch),
                            fallback=config.engine_fallback)
    names = [source.name for source in sources]
    if len(set(names)) != len(names):
        raise InputError(f"twin names must be unique, got {names}")
    engines: dict[str, Engine] = {}
    twins: dict[str, Twin] = {}
    for source in sources:
        key = str(resolve_artifact(source.model).resolve())
        if key not in engines:
            engine = create_engine(config.engine, source.model, options)
            log.info("engine %s for %s warmed up in %.2f s", engine.name, source.model, engine.warmup(config.max_batch))
            engines[key] = engine
        spec = engines[key].spec
        assets = TwinAssets.from_pack(AvatarPack.load(source.pack), spec)
        twins[source.name] = Twin(source.name, assets, key, MelSpec(**spec.mel), spec.crop_px)
    size = canvas_size(config.canvas)
    background = Background.load(config.canvas_background, size) if size is not None else None
    return TwinRuntime(twins, engines, config, background=background)


async def serve(config: ServeConfig, sources: list[TwinSource], *,
                announce: Callable[[str], None] = print) -> None:
    """Build the runtime (off the loop) and serve it until SIGINT or SIGTERM (see ``serve_runtime``)."""
    runtime = await asyncio.get_running_loop().run_in_executor(None, build_runtime, config, sources)
    await serve_runtime(runtime, config, announce=announce)


async def serve_runtime(runtime: TwinRuntime, config: ServeConfig, *,
                        announce: Callable[[str], None] = print) -> None:
    """Serve a built runtime until SIGINT or SIGTERM, then shut down gracefully and return.

    ``announce`` receives the line ``twincast serving http://HOST:PORT/`` with the port actually bound (so
    ``--port 0`` works), and, when the operator token was generated here, the token once.

    Shutdown: the listening socket closes; open WebSockets (dashboards, agent pushes) are closed with 1001
    "going away", since aiohttp would otherwise wait for them to end; then the runtime stops: every viewer's peer
    is closed (its DTLS close tells the browser at once), every recording is finished and renamed into place,
    every RTMP push is closed, and the render worker and engines are released.
    """
    token = config.operator_token
    generated = token is None
    if token is None:
        token = secrets.token_urlsafe(18)
    app = create_app(runtime, token, config.viewer_token)
    close_sockets_on_shutdown(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    if generated:  # shown once, never logged; set TWINCAST_OPERATOR_TOKEN to choose it instead
        announce(f"operator dashboard: http://{host}:{port}/dashboard#token={token}")
    await check_tts(runtime, config)
    announce(f"twincast serving http://{host}:{port}/")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
        log.info("shutting down: closing viewers, finishing recordings")
    finally:
        await runner.cleanup()
        log.info("shut down")


async def check_tts(runtime: TwinRuntime, config: ServeConfig) -> None:
    """Speak one word with the configured TTS: if it cannot, say so now (an error event and the log) rather than
    at the first ``/api/say`` of the show. The server serves on either way: pushed audio, audio files and the
    microphone need no TTS, and a TTS fixed while serving (espeak-ng installed) is used from the next request."""
    tts = make_tts(config.tts, Voice(name=config.voice))
    try:
        await tts.synthesize("ready")
    except TTS_FAILURES as exc:
        log.error("text to speech is not working: %s", exc)
        runtime.events.emit("speech", f"text to speech is not working: {exc}; /api/say fails until it is fixed "
                                      "(pushed audio, audio files and the microphone still work)", level="error")


def close_sockets_on_shutdown(app: web.Application) -> None:
    """Remember every WebSocket the app opens, and close those still open with 1001 when it shuts down."""
    sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()

    async def remember(request: web.Request, response: web.StreamResponse) -> None:
        if isinstance(response, web.WebSocketResponse):
            sockets.add(response)

    async def close_all(app: web.Application) -> None:
        await asyncio.gather(*(socket.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
                               for socket in list(sockets)))

    app.on_response_prepare.append(remember)
    app.on_shutdown.append(close_all)
