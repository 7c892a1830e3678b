"""Hostile footage for ``twincast enroll``: empty, cut short, mislabelled or huge files are refused with a message
naming the problem, exit 2 and write nothing; a file that says it is huge is refused from its size alone."""

from __future__ import annotations

import io
import wave
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avatar.enroll import EnrollConfig, enroll
from tests.helpers import run_cli
from twincast.errors import InputError, NotFoundError, UnprocessableError

PORTRAIT = Path(__file__).resolve().parents[2] / "assets" / "portrait.png"
TERABYTE = 10**12
CASES: Counter[str] = Counter()  # footage files tried, by kind


def wav_bytes(seconds: float = 1.0, rate_hz: int = 16_000) -> bytes:
    tone = (np.sin(np.arange(int(seconds * rate_hz)) / 4.0) * 8000).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate_hz)
        handle.writeframes(tone.tobytes())
    return buffer.getvalue()


def read_bytes_so_far() -> int:
    """Bytes this process has read through system calls (Linux's ``rchar``: holes of a sparse file count too)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def assert_refused(video: Path, out: Path, message: str) -> None:
    result = run_cli("enroll", str(video), "--out", str(out), "-q", check=False, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr, result.stderr[-2000:]
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.mark.parametrize(("name", "message"), [
    ("empty.mp4", "is empty (0 bytes)"),
    ("speech.mp4", "audio only, with no video stream"),  # a wav named .mp4
    ("portrait.mp4", "is a still image"),  # a png renamed
    ("folder.mp4", "is not a file"),
    ("sparse.mp4", "over the 16 GB limit (enroll max_input_gb)"),  # a terabyte that is all hole
    ("clip-and-hole.mp4", "over the 16 GB limit (enroll max_input_gb)"),  # a real clip, then a 20 GB hole
])
def test_empty_mislabelled_and_huge_footage_is_refused_by_name(name: str, message: str, clip: Path,
                                                                tmp_path: Path) -> None:
    video = tmp_path / name
    if name == "empty.mp4":
        video.touch()
    elif name == "speech.mp4":
        video.write_bytes(wav_bytes())
    elif name == "portrait.mp4":
        video.write_bytes(PORTRAIT.read_bytes())
    elif name == "folder.mp4":
        video.mkdir()
    else:
        video.write_bytes(clip.read_bytes() if name == "clip-and-hole.mp4" else b"")
        with video.open("r+b") as handle:
            handle.truncate(TERABYTE if name == "sparse.mp4" else 20 * 10**9)
    CASES[f"named: {name}"] += 1
    assert_refused(video, tmp_path / "pack", message)


def test_the_size_check_reads_nothing_of_a_file_that_says_it_is_huge(clip: Path, tmp_path: Path) -> None:
    video = tmp_path / "huge.mp4"
    video.write_bytes(clip.read_bytes())
    with video.open("r+b") as handle:
        handle.truncate(TERABYTE)  # the clip, then a hole: a player would start it, a hash would read it all
    CASES["a clip with a 1 TB hole, in-process"] += 1
    before = read_bytes_so_far()
    with pytest.raises(InputError, match=r"is 1000\.0 GB, over the 16 GB limit"):
        enroll(video, tmp_path / "pack", EnrollConfig(), progress=False)
    assert read_bytes_so_far() - before < 1_000_000  # not a byte of the video was read
    assert not (tmp_path / "pack").exists()


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fragments_and_noise_are_refused_with_a_reason_never_a_crash(data: st.DataObject, clip: Path,
                                                                    tmp_path: Path) -> None:
    """The first bytes of a clip, a wav or a png (cut anywhere in their headers), or noise: each is refused as
    not a readable video, never with anything but one of enrollment's own errors."""
    sources = {"clip": clip.read_bytes()[:4096], "wav": wav_bytes(0.2), "png": PORTRAIT.read_bytes()[:4096]}
    body = data.draw(st.one_of(
        st.sampled_from(sorted(sources)).flatmap(lambda kind: st.integers(0, len(sources[kind]))
                                                 .map(lambda cut: sources[kind][:cut])),
        st.binary(max_size=2000)))
    CASES["fragments and noise"] += 1
    video = tmp_path / "fragment.mp4"
    video.write_bytes(body)
    with pytest.raises((InputError, NotFoundError, UnprocessableError)):
        enroll(video, tmp_path / "pack", EnrollConfig(), progress=False)
    assert not (tmp_path / "pack").exists()


@pytest.mark.integration  # it reports on the tests above, which need the CLI chain's clip
def test_zz_report_the_cases_tried(capsys: pytest.CaptureFixture[str]) -> None:
    assert CASES  # the tests above ran in this process
    with capsys.disabled():
        print(f"\nhostile footage: {sum(CASES.values())} files given to enroll, all refused by name:")
        for kind, count in sorted(CASES.items()):
            print(f"  {count:5d}  {kind}")
