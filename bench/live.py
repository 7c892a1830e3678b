"""Live-loop benchmarks of a running twin (the demo unless --model/--avatar are given).

    .venv/bin/python -m bench.live latency|egress|interrupt|viewers|drift [--minutes 30] [--seconds 20]

latency    audio in (first loud PCM packet pushed over /api/push) → mouth response in frames received by an aiortc
           WHEP client on loopback, and that client's audio-vs-mouth onset offset; 10 trials. Also lip sync
           in the received frames, by both mouth measures (landmark opening, mouth-cavity pixels): their
           spread while idle and while speaking, and their correlation with the received speech level.
egress     the same, measured at the server egress: an in-process server whose session tracks are read as the
           encoders read them (no encoding, network or client), and the audio-vs-mouth offset there.
interrupt  POST /api/interrupt during speech → received audio silent and mouth closed; 10 trials.
viewers    N aiortc viewers at once (default 4): frames/s each receives, server fps and late frames.
drift      speech every 10 s for --minutes: the audio-vs-mouth onset offset of each utterance, first vs last.

Onsets are found in what the client received: the audio onset where the 20 ms level first exceeds -35 dBFS,
the mouth onset where the mouth box first differs from the idle frame by more than a threshold learned from
the idle frames. Everything runs on this machine; the client's decoding shares its CPU with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from avatar.speech import synthesize
from stream.whep_client import ReceivedMedia, drain, pull
from tests.helpers import AUTH, ServerProcess, crop_box

ONSET_DBFS = -35.0


def speech_pcm(text: str) -> tuple[bytes, int]:
    speech = synthesize(text)
    return (np.clip(speech.samples, -1, 1) * 32767).astype("<i2").tobytes(), speech.sample_rate_hz


def audio_onsets(media: ReceivedMedia, after: float) -> list[float]:
    """Arrival times of audio blocks where the level rises above ONSET_DBFS after ``after``."""
    onsets, loud_before = [], False
    for block, arrival in zip(media.audio_blocks, media.audio_arrival_s, strict=False):
        if arrival < after:
            continue
        level = 20 * np.log10(max(float(np.sqrt(np.mean(block.astype(np.float64) ** 2))), 1.0) / 32768)
        loud = level > ONSET_DBFS
        if loud and not loud_before:
            onsets.append(arrival)
        loud_before = loud
    return onsets


def mouth_box(pack: Path) -> tuple[slice, slice]:
    """Rows and columns of the mouth in the pack's full frames."""
    return crop_box(pack, (0.62, 0.9), (0.3, 0.7))


def mouth_series(media: ReceivedMedia, pack: Path) -> np.ndarray:
    """Mean absolute difference of each received frame's mouth box from the median of the first 10 frames."""
    rows, cols = mouth_box(pack)
    return mouth_changes([frame[rows, cols] for frame in media.video])


def mouth_changes(boxes: list[np.ndarray]) -> np.ndarray:
    """Mean absolute difference of each mouth box from the median of the first 10."""
    stack = np.stack(boxes).astype(np.float32)
    return np.abs(stack - np.median(stack[:10], axis=0)).mean(axis=(1, 2, 3))


def first_crossing(times: np.ndarray, values: np.ndarray, threshold: float, after: float) -> float | None:
    for moment, value in zip(times, values, strict=True):
        if moment >= after and value > threshold:
            return float(moment)
    return None


async def push_speech(url: str, pcm: bytes, rate: int) -> float:
    """Push one utterance over the WebSocket; returns when its first packet was sent."""
    async with aiohttp.ClientSession() as client, client.ws_connect(url + "/api/push", headers=AUTH) as socket:
        await socket.receive_json()
        await socket.send_json({"type": "start", "sample_rate": rate})
        await socket.receive_json()
        sent_at = time.monotonic()
        packet = 2 * rate // 25
        for start in range(0, len(pcm), packet):
            await socket.send_bytes(pcm[start:start + packet])
        await socket.send_json({"type": "end"})
        await socket.receive_json()
    return sent_at


def trim_leading_silence(pcm: bytes) -> bytes:
    samples = np.frombuffer(pcm, "<i2")
    loud = np.flatnonzero(np.abs(samples) > 1000)
    return samples[loud[0]:].tobytes() if loud.size else pcm


async def latency(server: ServerProcess, pack: Path, trials: int) -> dict[str, Any]:
    pcm, rate = speech_pcm("Papa bought a big bag of apples.")
    pcm = trim_leading_silence(pcm)
    pushes: list[float] = []

    async def speak_repeatedly() -> None:
        await asyncio.sleep(1.5)
        for _ in range(trials):
            pushes.append(await push_speech(server.url, pcm, rate))
            await asyncio.sleep(3.0)

    media = await pull(server.url, 1.0, during=speak_repeatedly)
    pairs, threshold = onset_pairs(media, np.array(media.video_arrival_s), mouth_series(media, pack), pushes)
    rows = [{"mouth_ms": 1000 * (mouth - pushed), "audio_ms": 1000 * (sound - pushed),
             "av_offset_ms": 1000 * (mouth - sound)} for pushed, mouth, sound in pairs]
    figures = {"threshold": round(threshold, 2), "lipsync": lipsync(media, pushes, len(pcm) / 2 / rate)}
    return summarize("latency", rows, figures)


def lipsync(media: ReceivedMedia, pushes: list[float], utterance_s: float, max_lag_frames: int = 5
            ) -> dict[str, Any]:
    """Each mouth measure on the received whole frames (``model.eval.mouth_signals``): its standard deviation
    over the idle second before the first push and over the utterances (from 0.15 s after each push, when the
    mouth starts to answer, to 0.3 s after the utterance's length), and its best correlation with the received
    speech level (RMS of the 20 ms audio blocks, interpolated to each frame's arrival) over lags of
    ±``max_lag_frames`` (positive: the mouth runs late)."""
    from model.eval import mouth_signals
    from model.metrics import lagged_correlation

    frame_s = np.array(media.video_arrival_s)
    block_rms = np.array([np.sqrt(np.mean(block.astype(np.float64) ** 2)) for block in media.audio_blocks])
    level = np.interp(frame_s, np.array(media.audio_arrival_s), block_rms)
    idle = (frame_s >= pushes[0] - 1.0) & (frame_s < pushes[0])  # FaceMesh settles over the first frames
    speaking = np.zeros(frame_s.shape, bool)
    for pushed in pushes:
        speaking |= (frame_s >= pushed + 0.15) & (frame_s < pushed + utterance_s + 0.3)
    measures = mouth_signals(media.video, pad_px=0)
    report: dict[str, Any] = {"frames": len(frame_s), "idle_frames": int(idle.sum()),
                              "speaking_frames": int(speaking.sum())}
    for name, series in (("landmarks", measures.opening), ("pixels", measures.cavity)):
        correlation, lag = lagged_correlation(series, level, max_lag_frames)
        report[name] = {"std_idle": round(float(np.nanstd(series[idle])), 4),
                        "std_speaking": round(float(np.nanstd(series[speaking])), 4),
                        "corr_with_speech": round(correlation, 3), "lag_frames": lag,
                        "no_face_frames": int(np.isnan(series).sum())}
    return report


def onset_pairs(media: ReceivedMedia, times: np.ndarray, series: np.ndarray,
                pushes: list[float]) -> tuple[list[tuple[float, float, float]], float]:
    """(push, mouth onset, audio onset) per utterance whose both onsets were found, and the mouth threshold
    (learned from the frames before the first push)."""
    idle = series[times < pushes[0]]
    threshold = float(idle.mean() + 6 * idle.std() + 1.0)
    audio = audio_onsets(media, pushes[0] - 0.1)
    pairs = []
    for pushed in pushes:
        mouth = first_crossing(times, series, threshold, pushed)
        sound = next((t for t in audio if t >= pushed), None)
        if mouth is not None and sound is not None:
            pairs.append((pushed, mouth, sound))
    return pairs, threshold


async def interrupt(server: ServerProcess, pack: Path, trials: int) -> dict[str, Any]:
    text = "This is a long sentence that keeps going so that it can be interrupted in the middle of it."
    marks: list[float] = []

    async def speak_and_cut() -> None:
        await asyncio.sleep(1.5)
        loop = asyncio.get_running_loop()
        for _ in range(trials):
            await loop.run_in_executor(None, lambda: server.post("/api/say", {"text": text}))
            await asyncio.sleep(1.5)
            marks.append(time.monotonic())
            await loop.run_in_executor(None, lambda: server.post("/api/interrupt", {}))
            await asyncio.sleep(1.5)

    media = await pull(server.url, 0.5, during=speak_and_cut)
    series = mouth_series(media, pack)
    times = np.array(media.video_arrival_s)
    threshold = float(series[times < marks[0] - 1.5].mean() + 6 * series[times < marks[0] - 1.5].std() + 1.0)
    blocks = list(zip(media.audio_arrival_s, media.audio_blocks, strict=False))
    rows = []
    for mark in marks:
        silent = next((t for t, b in blocks if t >= mark and _quiet_from(blocks, t)), None)
        closed = next((t for t, v in zip(times, series, strict=True) if t >= mark and v < threshold), None)
        if silent is not None and closed is not None:
            rows.append({"audio_silent_ms": 1000 * (silent - mark), "mouth_closed_ms": 1000 * (closed - mark)})
    return summarize("interrupt", rows, {})


def _quiet_from(blocks: list[tuple[float, np.ndarray]], start: float, span_s: float = 0.3) -> bool:
    window = [b for t, b in blocks if start <= t < start + span_s]
    return bool(window) and all(np.abs(b).max() < 300 for b in window)


async def viewers(server: ServerProcess, count: int, seconds: float) -> dict[str, Any]:
    before = server.get("/api/stats")[1]
    results = await asyncio.gather(*(pull(server.url, seconds, keep_video=2) for _ in range(count)))
    after = server.get("/api/stats")[1]
    received = [len(media.video_pts) / seconds for media in results]
    return {"benchmark": "viewers", "viewers": count, "seconds": seconds,
            "received_fps": [round(value, 2) for value in received], "server_fps": after["fps"],
            "late_frames": after["late_frames"] - before["late_frames"],
            "repeated_frames": after["repeated_frames"] - before["repeated_frames"],
            "render_ms_p50": after["render_ms_p50"], "render_ms_p99": after["render_ms_p99"]}


async def drift(server: ServerProcess, pack: Path, minutes: float) -> dict[str, Any]:
    pcm, rate = speech_pcm("Papa bought a big bag of apples.")
    pcm = trim_leading_silence(pcm)
    pushes: list[float] = []
    end = time.monotonic() + 60 * minutes

    async def speak_every_ten_seconds() -> None:
        await asyncio.sleep(2.0)
        while time.monotonic() < end:
            pushes.append(await push_speech(server.url, pcm, rate))
            await asyncio.sleep(max(0.0, 10.0 - (time.monotonic() - pushes[-1])))

    rows, cols = mouth_box(pack)  # keep only the mouth box: 30 min of frames fit
    media = await pull(server.url, 1.0, keep_video=10**7, during=speak_every_ten_seconds,
                       reduce=lambda rgb: rgb[rows, cols].copy())
    pairs, _ = onset_pairs(media, np.array(media.video_arrival_s), mouth_changes(media.video), pushes)
    offsets = [1000 * (mouth - sound) for _, mouth, sound in pairs]
    head, tail = offsets[: max(1, len(offsets) // 10)], offsets[-max(1, len(offsets) // 10):]
    return {"benchmark": "drift", "minutes": minutes, "utterances": len(pushes), "measured": len(offsets),
            "offset_first_ms": round(statistics.mean(head), 1), "offset_last_ms": round(statistics.mean(tail), 1),
            "drift_ms": round(statistics.mean(tail) - statistics.mean(head), 1),
            "video_pts_span_s": (media.video_pts[-1] - media.video_pts[0]) / 90_000,
            "audio_span_s": len(media.audio) / 48_000}


async def egress(trials: int) -> dict[str, Any]:
    """The server alone: an in-process demo server whose session tracks are read directly, as the encoders
    read them, while speech is pushed over its real /api/push socket. No encoder, network or client decode."""
    from aiohttp import web

    from stream.app import create_app
    from stream.config import ServeConfig
    from stream.server import TwinSource, build_runtime
    from stream.tracks import TwinAudioTrack
    from tests.helpers import OPERATOR_TOKEN
    from twincast.demo import cache_dir, demo_model

    pack = _demo_pack()
    config = ServeConfig(port=0, pose="still", operator_token=OPERATOR_TOKEN)
    loop = asyncio.get_running_loop()
    runtime = await loop.run_in_executor(None, build_runtime, config,
                                         [TwinSource("demo", pack, demo_model(cache_dir()))])
    runner = web.AppRunner(create_app(runtime, OPERATOR_TOKEN), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}"
    rows, cols = mouth_box(pack)
    media = ReceivedMedia()
    video = runtime.relay.subscribe(runtime.channel("demo").video_source, buffered=False)
    audio = TwinAudioTrack(runtime.session("demo"))
    pcm, rate = speech_pcm("Papa bought a big bag of apples.")
    pcm = trim_leading_silence(pcm)
    pushes: list[float] = []
    readers = [asyncio.ensure_future(drain(video, media, reduce=lambda rgb: rgb[rows, cols].copy())),
               asyncio.ensure_future(drain(audio, media))]
    try:
        await asyncio.sleep(2.5)
        for _ in range(trials):
            pushes.append(await push_speech(url, pcm, rate))
            await asyncio.sleep(3.0)
    finally:
        for reader in readers:
            reader.cancel()
        await runner.cleanup()
    times = np.array(media.video_arrival_s)
    settled = times >= times[0] + 1.0  # the first second holds the start-up frames
    series = mouth_changes([box for box, keep in zip(media.video, settled, strict=True) if keep])
    pairs, threshold = onset_pairs(media, times[settled], series, pushes)
    report = summarize("egress", [{"mouth_ms": 1000 * (mouth - pushed), "audio_ms": 1000 * (sound - pushed),
                                   "av_offset_ms": 1000 * (mouth - sound)} for pushed, mouth, sound in pairs],
                       {"threshold": round(threshold, 2)})
    report["server"] = {"audio_to_frame_ms": runtime.session("demo").delay_frames * 40.0}
    return report


def summarize(name: str, rows: list[dict[str, float]], extra: dict[str, Any]) -> dict[str, Any]:
    report: dict[str, Any] = {"benchmark": name, "trials": len(rows), **extra}
    for key in rows[0] if rows else []:
        values = [row[key] for row in rows]
        report[key] = {"p50": round(statistics.median(values), 1), "min": round(min(values), 1),
                       "max": round(max(values), 1)}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", choices=["latency", "interrupt", "viewers", "drift", "egress"])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--viewers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--model")
    parser.add_argument("--avatar")
    args = parser.parse_args()
    if args.benchmark == "egress":
        report = asyncio.run(egress(args.trials))
        report["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
        report["date"] = time.strftime("%Y-%m-%d")
        print(json.dumps(report, indent=1))
        return
    command = ["serve", "--model", args.model, "--avatar", args.avatar] if args.model else ["demo"]
    with ServerProcess(*command, "--port", "0", "--pose", "still", "-q") as server:
        pack = Path(args.avatar) if args.avatar else _demo_pack()
        time.sleep(2.0)
        if args.benchmark == "latency":
            report = asyncio.run(latency(server, pack, args.trials))
        elif args.benchmark == "interrupt":
            report = asyncio.run(interrupt(server, pack, args.trials))
        elif args.benchmark == "viewers":
            report = asyncio.run(viewers(server, args.viewers, args.seconds))
        else:
            report = asyncio.run(drift(server, pack, args.minutes))
        report["server"] = {"audio_to_frame_ms": server.get("/api/stats")[1]["audio_to_frame_ms"]}
    report["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
    report["date"] = time.strftime("%Y-%m-%d")
    print(json.dumps(report, indent=1))


def _demo_pack() -> Path:
    from twincast.demo import cache_dir, demo_pack

    return demo_pack(cache_dir(), progress=False)


if __name__ == "__main__":
    main()
