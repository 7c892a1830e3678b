"""Twins loaded into a running server, and what a session needs to switch to one.

``load_twin`` reads an avatar pack and a model artifact and builds (and warms up) the engine, off the event loop:
the server's hot-load (``POST /api/twins/{name}/live``) and its start share it. ``switch_compositor`` makes the
compositor a session switching twins composes the new twin's frames with.

What viewers get when twins differ in size: a session's picture size never changes (its viewers' decoders, the
OBS source sized to it, its RTMP pushes and recordings were all set up for it). A twin of the same size as the
session's frame is shown as it is; on a canvas (``serve.canvas``) it takes the old twin's place and background;
without a canvas, a twin of another size is scaled to fit the session's frame, centred, on black.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from avatar.audio import MelSpec
from avatar.pack import AvatarPack
from engines.base import Engine, EngineOptions, create_engine
from export.spec import resolve_artifact
from stream.assets import TwinAssets
from stream.canvas import Background, Compositor, Placement
from stream.config import ServeConfig
from stream.session import Twin
from twincast.errors import NotFoundError

log = logging.getLogger(__name__)
LETTERBOX = "#000000"  # behind a twin scaled to fit a session's frame of another size
TWIN_PACK = "pack"  # inside a twin directory made by `twincast create`
TWIN_MODEL = "twin.onnx"


@dataclass(frozen=True)
class LoadedTwin:
    """A twin ready to join the runtime, and its engine when it brought a new one (None: it shares one)."""

    twin: Twin
    engine_key: str
    engine: Engine | None


def twin_dir_paths(directory: Path) -> tuple[Path, Path]:
    """The avatar pack and model artifact inside a twin directory made by ``twincast create``.

    Raises:
        NotFoundError: the directory holds no finished twin.
    """
    pack, model = directory / TWIN_PACK, directory / TWIN_MODEL
    if not (pack / "avatar.json").is_file() or not model.is_file():
        raise NotFoundError(f"{directory} holds no finished twin (expected {TWIN_PACK}/ and {TWIN_MODEL} from "
                            "`twincast create`)")
    return pack, model


def load_twin(name: str, pack: Path, model: Path, config: ServeConfig, engines: dict[str, Engine]) -> LoadedTwin:
    """Load a twin's assets and, unless one of ``engines`` already runs its artifact, its engine (warmed up).
    Blocking: call it off the event loop.

    Raises:
        NotFoundError, InputError, ArtifactMismatchError: the pack or the artifact is missing, unreadable, or they
            were not made for each other.
    """
    key = str(resolve_artifact(model).resolve())
    engine = engines.get(key)
    created = None
    if engine is None:
        options = EngineOptions(threads=config.threads, spin=False, max_batch=max(8, config.max_batch),
                                fallback=config.engine_fallback)
        engine = created = create_engine(config.engine, model, options)
        log.info("engine %s for %s warmed up in %.2f s", engine.name, model, engine.warmup(config.max_batch))
    try:
        assets = TwinAssets.from_pack(AvatarPack.load(pack), engine.spec)
    except BaseException:
        if created is not None:
            created.close()
        raise
    return LoadedTwin(Twin(name, assets, key, MelSpec(**engine.spec.mel), engine.spec.crop_px), key, created)


def switch_compositor(current: Compositor, assets: TwinAssets) -> Compositor:
    """The compositor for a session switching to a twin with ``assets``: the same picture size, the same
    on-screen elements; on a canvas the same background and placement; without one, the new twin's own frame
    when it has the session's size, else that frame scaled to fit it, centred on black."""
    layout = current.layout
    if current.canvas is not None and layout is not None:
        switched = Compositor(assets, current.fps, canvas=current.canvas, background=layout.background,
                              overlays=current.overlays)
        switched.place(layout.placement)
        return switched
    if assets.frame_size == current.frame_size:
        return Compositor(assets, current.fps, overlays=current.overlays)
    size = current.frame_size
    switched = Compositor(assets, current.fps, canvas=size, background=Background.colour(LETTERBOX, size),
                          overlays=current.overlays)
    switched.place(fitted(size, assets.frame_size))
    return switched


def fitted(frame: tuple[int, int], twin: tuple[int, int]) -> Placement:
    """The twin's frame as large as fits inside ``frame`` (width, height), keeping its shape, centred."""
    width, height = frame
    twin_width, twin_height = twin
    scale = min(1.0, (height / twin_height) * twin_width / width)
    return Placement(0.5, 0.5, scale)
