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
    past, future = spec.past_frames, spec.future_frames
    for frame in (0, 5, 20, 39):
        first = frame - past
        local = np.zeros((past + future + 1) * FEATURE_SAMPLES_PER_FRAME, np.float32)
        for offset in range(past + future + 1):
            source = first + offset
            if 0 <= source < 40:
                local[offset * 640:(offset + 1) * 640] = audio[source * 640:(source + 1) * 640]
        live = mel_windows(local, np.array([frame]), spec, first_frame=first)
        np.testing.assert_allclose(live[0], offline[frame], atol=1e-5)


def test_window_looks_back_and_only_a_little_ahead() -> None:
    spec = MelSpec()
    audio = np.zeros(30 * 640, np.float32)
    audio[15 * 640:16 * 640] = np.sin(np.arange(640) * 0.3).astype(np.float32)
    windows = mel_windows(audio, np.arange(30), spec)
    loud = windows.max(axis=(1, 2))
    assert loud[15] > 0.5
    assert loud[13] == pytest.approx(-1.5)  # two frames before the sound: silence floor, no look-ahead that far
    assert loud[14] > -1.5  # one frame before: the 20 ms look-ahead (plus half an FFT) reaches it
    assert loud[19] > 0.5  # frames after it still see it in their past context
    assert loud[25] == pytest.approx(-1.5)
    assert (spec.past_frames, spec.future_frames) == (5, 1)
    symmetric = MelSpec(lookahead_ms=93.75)
    assert (symmetric.past_frames, symmetric.future_frames) == (3, 3)


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
