"""Shared fixtures: one synthetic clip → pack → tiny run → artifact chain per test session.

Every stage's tests reuse this chain, so the whole pipeline is exercised once with real parts (espeak-ng,
mediapipe, PyTorch, ONNX Runtime) and each test then asserts on its own stage.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ServerProcess, run_cli

CLIP_TEXT = "Hello there. The twin opens its mouth when it speaks, and closes it in silence."
NEW_PERSON_TEXT = "Good evening. I am a new twin, made from this video in one step, and now I go live."


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")
    parser.addoption("--pixel-jitter", type=int, default=None, metavar="SEED",
                     help="re-encode the synthetic clip with ±2 grey levels of seeded noise: the landmarks then "
                          "jitter as they do on another CPU, so thresholds that only pass on this machine show up")


# Fixtures that run the CLI chain (synth → enroll → train → export) or a server: a test that needs any of them
# belongs to the integration tier. The unit tier (``make unit``, ``-m "not integration"``) is what is left:
# in-process, tiny models built in the test, injected clocks.
CHAIN_FIXTURES = frozenset({"clip", "pack", "run_dir", "artifact", "full_run", "server", "new_person_clip"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from engines.base import cuda_available

    skip_slow = pytest.mark.skip(reason="slow: run with --run-slow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (these run on GPU machines; nothing is faked here)")
    has_cuda = any("gpu" in item.keywords for item in items) and cuda_available()
    for item in items:
        if CHAIN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session", autouse=True)
def _quiet_environment(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ["TWINCAST_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chain")


@pytest.fixture(scope="session")
def clip(workdir: Path, request: pytest.FixtureRequest) -> Path:
    """A 256² synthetic talking-head clip of the committed portrait (about 7 s).

    With ``--pixel-jitter SEED`` its pictures carry seeded noise of ±2 grey levels (see ``pytest_addoption``).
    """
    out = workdir / "clip.mp4"
    run_cli("synth-footage", "--text", CLIP_TEXT, "--out", str(out), "--size", "256", "-q")
    seed = request.config.getoption("--pixel-jitter")
    if seed is not None:
        _jitter_pixels(out, seed)
    return out


@pytest.fixture(scope="session")
def new_person_clip(workdir: Path) -> Path:
    """A 256² synthetic talking-head clip (about 7 s) of someone other than the committed demo portrait: Grace
    Hopper (``assets/portrait-hopper.jpg``, a US Navy photograph in the public domain), for the tests that make a
    new twin from a video."""
    out = workdir / "new-person.mp4"
    portrait = Path(__file__).resolve().parents[1] / "assets" / "portrait-hopper.jpg"
    run_cli("synth-footage", "--portrait", str(portrait), "--text", NEW_PERSON_TEXT, "--out", str(out), "--size",
            "256", "--seed", "3", "-q")
    return out


def _jitter_pixels(clip: Path, seed: int) -> None:
    """Re-encode ``clip`` in place, as synth-footage writes it, with ±2 grey levels of noise on every picture."""
    import numpy as np

    from avatar.audio import PLAYBACK_SAMPLES_PER_FRAME
    from avatar.video_io import VideoWriter
    from tests.avatar.faults import decode

    frames, audio = decode(clip)
    rng = np.random.default_rng(seed)
    height, width = frames[0].shape[:2]
    with VideoWriter(clip, width=width, height=height, fps=25) as writer:
        for index, rgb in enumerate(frames):
            noisy = np.clip(rgb.astype(np.int16) + rng.integers(-2, 3, rgb.shape), 0, 255).astype(np.uint8)
            writer.write(noisy, audio[index * PLAYBACK_SAMPLES_PER_FRAME : (index + 1) * PLAYBACK_SAMPLES_PER_FRAME])


@pytest.fixture(scope="session")
def pack(workdir: Path, clip: Path) -> Path:
    """The clip enrolled at a 64² crop."""
    out = workdir / "pack"
    run_cli("enroll", str(clip), "--out", str(out), "--crop-px", "64", "-q")
    return out


@pytest.fixture(scope="session")
def run_dir(workdir: Path, pack: Path) -> Path:
    """A tiny renderer trained on the pack for a few seconds."""
    out = workdir / "run"
    run_cli("train", str(pack), "--config", "tiny", "--out", str(out), "--steps", "150", "-q")
    return out


@pytest.fixture(scope="session")
def artifact(workdir: Path, run_dir: Path) -> Path:
    """The tiny run exported to ONNX (2 sampler steps)."""
    out = workdir / "artifact" / "twin.onnx"
    run_cli("export", str(run_dir), "--out", str(out), "--variant", "teacher")
    return out


@pytest.fixture(scope="session")
def full_run(workdir: Path, run_dir: Path) -> Path:
    """The tiny run with its consistency student and its regression baseline too."""
    import shutil

    out = workdir / "full-run"
    shutil.copytree(run_dir, out)
    run_cli("distill", str(out), "-q")
    run_cli("train", str(workdir / "pack"), "--config", "tiny", "--objective", "regression", "--out", str(out),
            "--steps", "150", "-q")
    return out


@pytest.fixture(scope="session")
def server(workdir: Path, pack: Path, artifact: Path) -> Iterator[ServerProcess]:
    """``twincast serve`` on a free loopback port, with a still head so only the mouth moves.

    Its recordings go to a temporary directory; its per-address limits are raised, since every test talks to it
    from one address, some of them on purpose with wrong tokens (the limits are tested in ``test_limits``).
    """
    with ServerProcess("serve", "--avatar", str(pack), "--model", str(artifact), "--port", "0",
                       "--pose", "still", env={
                           "TWINCAST_SERVE_RECORDINGS_DIR": str(workdir / "recordings"),
                           "TWINCAST_SERVE_OPERATOR_RATE_PER_S": "1000", "TWINCAST_SERVE_OPERATOR_BURST": "1000",
                           "TWINCAST_SERVE_MAX_AUTH_FAILURES": "1000"}) as process:
        yield process
