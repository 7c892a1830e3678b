import numpy as np
import pytest

from avatar.audio import (
    FEATURE_SAMPLES_PER_FRAME,
    PLAYBACK_SAMPLES_PER_FRAME,
    MelSpec,
    mel_windows,
    resample,
    rms_dbfs,
    split_frames,
)
from twincast.errors import InputError


def test_frame_owns_exact_sample_counts() -> None:
    assert PLAYBACK_SAMPLES_PER_FRAME == 1920
    assert FEATURE_SAMPLES_PER_FRAME == 640


def test_live_window_from_local_buffer_equals_offline_window() -> None:
    # The live loop computes frame n's window from frames n-K..n+K only; it must equal the enrollment value.
    spec = MelSpec()
    rng = np.random.default_rng(0)
    audio = rng.standard_normal(40 * FEATURE_SAMPLES_PER_FRAME).astype(np.float32) * 0.1
    offline = mel_windows(audio, np.arange(40), spec)
    context = spec.context_frames
    for frame in (0, 5, 20, 39):
        first = frame - context
        local = np.zeros((2 * context + 1) * FEATURE_SAMPLES_PER_FRAME, np.float32)
        for offset in range(2 * context + 1):
            source = first + offset
            if 0 <= source < 40:
                local[offset * 640:(offset + 1) * 640] = audio[source * 640:(source + 1) * 640]
        live = mel_windows(local, np.array([frame]), spec, first_frame=first)
        np.testing.assert_allclose(live[0], offline[frame], atol=1e-5)


def test_window_reacts_to_sound_only_near_its_frame() -> None:
    spec = MelSpec()
    audio = np.zeros(30 * 640, np.float32)
    audio[15 * 640:16 * 640] = np.sin(np.arange(640) * 0.3).astype(np.float32)
    windows = mel_windows(audio, np.arange(30), spec)
    loud = windows.max(axis=(1, 2))
    assert loud[15] > 0.5
    assert loud[5] == pytest.approx(-1.5)  # silence floor
    assert loud[25] == pytest.approx(-1.5)
    assert spec.context_frames == 3


def test_resample_and_split() -> None:
    tone = np.sin(np.linspace(0, 100, 22271)).astype(np.float32)  # 1.01 s
    up = resample(tone, 22050, 48000)
    assert abs(up.shape[0] - 48480) <= 2
    frames = split_frames(up, 1920)
    assert frames.shape == (26, 1920)  # 25.25 frames, the last one zero-padded
    assert frames[-1, -1] == 0.0 and frames[-1, 0] != 0.0
    assert rms_dbfs(np.zeros(10)) == float("-inf")


def test_mel_rejects_stereo() -> None:
    with pytest.raises(InputError, match="mono"):
        mel_windows(np.zeros((100, 2), np.float32), np.array([0]), MelSpec())
