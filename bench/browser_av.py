"""A/V offset at a real browser: headless Chromium plays the player page while speech is pushed.

    .venv/bin/python -m bench.browser_av [--trials 10]

In the page, a Web Audio analyser taps the received stream (level every 10 ms) and requestVideoFrameCallback
copies each presented frame's mouth box to a canvas (difference from the idle frame). Per utterance, the offset
is the mouth onset's presentation time minus the audio onset's time; positive means the mouth moves late.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import platform
import statistics
import time
from typing import Any

from bench.live import push_speech, speech_pcm, trim_leading_silence
from tests.helpers import ServerProcess, crop_box
from tests.stream.test_player_chromium import CHROMIUM, CHROMIUM_ARGS

PROBE = """([x0, y0, x1, y1]) => {
  const video = document.getElementById("video");
  const context = new AudioContext();
  const analyser = context.createAnalyser();
  analyser.fftSize = 512;
  context.createMediaStreamSource(video.srcObject).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  window.audioLog = [];
  setInterval(() => {
    analyser.getFloatTimeDomainData(samples);
    let peak = 0;
    for (const value of samples) peak = Math.max(peak, Math.abs(value));
    window.audioLog.push([performance.now(), peak]);
  }, 10);
  const canvas = new OffscreenCanvas(x1 - x0, y1 - y0);
  const draw = canvas.getContext("2d", { willReadFrequently: true });
  let idle = null;
  window.videoLog = [];
  const onFrame = (now, meta) => {
    draw.drawImage(video, x0, y0, x1 - x0, y1 - y0, 0, 0, x1 - x0, y1 - y0);
    const pixels = draw.getImageData(0, 0, x1 - x0, y1 - y0).data;
    if (idle === null) idle = pixels.slice();
    let total = 0;
    for (let i = 0; i < pixels.length; i += 4) total += Math.abs(pixels[i] - idle[i]);
    window.videoLog.push([meta.expectedDisplayTime, total / (pixels.length / 4)]);
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
  return context.state;
}"""


def onsets(log: list[list[float]], threshold: float, gap_ms: float = 800) -> list[float]:
    """Times where the value rises above ``threshold`` after at least ``gap_ms`` below it."""
    found, last_loud = [], -1e12
    for moment, value in log:
        if value > threshold:
            if moment - last_loud > gap_ms:
                found.append(moment)
            last_loud = moment
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from twincast.demo import cache_dir, demo_pack

    pack = demo_pack(cache_dir(), progress=False)
    rows, cols = crop_box(pack, (0.62, 0.9), (0.3, 0.7))
    pcm, rate = speech_pcm("Papa bought a big bag of apples.")
    pcm = trim_leading_silence(pcm)
    with ServerProcess("demo", "--port", "0", "--pose", "still", "-q") as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames > 25",
                               timeout=30_000)
        page.evaluate(PROBE, [cols.start, rows.start, cols.stop, rows.stop])
        page.wait_for_timeout(1500)
        with concurrent.futures.ThreadPoolExecutor(1) as pusher:  # Playwright's sync API owns this thread's loop
            for _ in range(args.trials):
                pusher.submit(asyncio.run, push_speech(server.url, pcm, rate)).result()
                page.wait_for_timeout(4500)  # the utterance (~2 s) plays, then ~2.5 s of silence
        audio_log, video_log = page.evaluate("window.audioLog"), page.evaluate("window.videoLog")
        browser.close()
    idle_values = [value for _, value in video_log[:20]]
    threshold = statistics.mean(idle_values) + 6 * statistics.pstdev(idle_values) + 2.0
    sounds, mouths = onsets(audio_log, 0.05), onsets(video_log, threshold)
    offsets = []
    for sound in sounds:
        mouth = min((m for m in mouths if abs(m - sound) < 600), key=lambda m: abs(m - sound), default=None)
        if mouth is not None:
            offsets.append(mouth - sound)
    report: dict[str, Any] = {"benchmark": "browser_av", "trials": args.trials, "audio_onsets": len(sounds),
                              "mouth_onsets": len(mouths), "matched": len(offsets),
                              "mouth_threshold": round(threshold, 2),
                              "offsets_ms": [round(value, 1) for value in offsets],
                              "offset_ms": {"p50": round(statistics.median(offsets), 1),
                                            "min": round(min(offsets), 1), "max": round(max(offsets), 1)}
                              if offsets else None,
                              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                              "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
