"""The embedded default twin: a pack built from the committed portrait, and the committed demo model.

The pack is rebuilt deterministically (espeak-ng speech, the same synthetic footage, the same enrollment) into
a cache directory keyed by the recipe, so the repository carries only the portrait and the small model.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

from avatar.audio import MelSpec
from avatar.enroll import EnrollConfig, enroll
from avatar.pack import SCHEMA_VERSION
from avatar.synth import DEFAULT_PORTRAIT, DEFAULT_TEXT, SynthConfig, synth_footage
from twincast.errors import NotFoundError
from twincast.files import sha256_file

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL_DIR = REPO_ROOT / "assets" / "demo"
DEMO_SYNTH = SynthConfig(size_px=384, seed=7)
DEMO_ENROLL = EnrollConfig(crop_px=128)


def cache_dir(environ: dict[str, str] | None = None) -> Path:
    """Where derived data (the demo pack) is kept: ``$TWINCAST_CACHE_DIR`` or ``~/.cache/twincast``."""
    env = os.environ if environ is None else environ
    return Path(env.get("TWINCAST_CACHE_DIR") or Path.home() / ".cache" / "twincast")


def recipe_key() -> str:
    """A short hash of everything the demo pack depends on."""
    recipe = {"synth": asdict(DEMO_SYNTH), "enroll": asdict(DEMO_ENROLL), "text": DEFAULT_TEXT,
              "portrait": sha256_file(DEFAULT_PORTRAIT), "schema": SCHEMA_VERSION, "mel": asdict(MelSpec())}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def demo_pack(root: Path, *, progress: bool = True) -> Path:
    """The demo avatar pack under ``root``, built first if it is not there yet."""
    pack = root / f"demo-pack-{recipe_key()}"
    if (pack / "avatar.json").is_file():
        return pack
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as scratch:
        clip = Path(scratch) / "demo.mp4"
        synth_footage(DEFAULT_PORTRAIT, DEFAULT_TEXT, clip, DEMO_SYNTH, progress=progress)
        enroll(clip, pack, replace(DEMO_ENROLL), progress=progress, force=True)
    return pack


def demo_model(root: Path) -> Path:
    """The committed demo run (``assets/demo``), exported once into ``root``; returns its ``twin.onnx``.

    Raises:
        NotFoundError: the repository has no demo model (rebuild it with ``make demo-model``).
    """
    from export.onnx_export import artifact_for

    if not (DEMO_MODEL_DIR / "checkpoint.pt").is_file():
        raise NotFoundError(
            f"the demo model {DEMO_MODEL_DIR}/checkpoint.pt is missing; rebuild it with `make demo-model`"
        )
    return artifact_for(DEMO_MODEL_DIR, root)
