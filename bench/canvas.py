"""What the broadcast canvas costs: the compose step alone, and the live twin at 25 fps on a 9:16 canvas.

Run:  .venv/bin/python -m bench.canvas compose [--frames 500]
      .venv/bin/python -m bench.canvas live [--seconds 20]

``compose`` times ``Compositor.compose_i420`` in this process on the demo twin's assets (its 384² frames, a
rendered face of its 128² crop) at the pack's own frame, at 720×1280 and 1080×1920 (a colour, then a looping
video behind the twin), with and without the four on-screen elements (a card with a picture, a counting-down
badge, a lower third and a ticker), called from one thread as the render worker calls it (OpenCV with its
default threads, as in the server).

``live`` runs ``twincast demo`` as its own process, first as it is (the pack's own frame), then with
``--canvas 720x1280`` and the four elements shown, each with speech playing: 0 viewers, then one aiortc WHEP
viewer (which decodes VP8 in this process). It reports the server's render rate, render and compose times, late
frames and CPU (of the machine's cores), and the frames the viewer received.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import requests
from PIL import Image

from avatar.pack import AvatarPack
from bench.serve_cpu import measure
from export.spec import load_spec
from stream.assets import TwinAssets
from stream.canvas import Background, Compositor
from stream.overlay_art import CardContent
from stream.overlays import CountdownBadge, Ticker, card_element, lower_third_element
from tests.helpers import ServerProcess
from twincast.demo import cache_dir, demo_model, demo_pack

CARD: dict[str, Any] = {"id": "jacket", "name": "Packable rain jacket, storm grey", "price": "$59.00",
                        "was_price": "$89.00",
                        "bullets": ["Waterproof to 10,000 mm", "Folds into its own pocket", "Sizes XS to XXL"],
                        "code": "RAIN20"}


def _elements(compositor: Compositor) -> None:
    layout = compositor.overlays.layout
    picture = Image.open("assets/portrait.png").convert("RGBA")
    content = CardContent(CARD["name"], CARD["price"], CARD["was_price"], tuple(CARD["bullets"]), "Code RAIN20",
                          picture)
    for element in (card_element(layout, content, {}), lower_third_element(layout, "Mia Chen", "your host"),
                    CountdownBadge(layout, "-34%", "today only", 300 * 25, 25),
                    Ticker(layout, "Free shipping over $50 · ask your questions in the chat", 0, 25)):
        compositor.overlays.show(element, 0)


def _loop_video(path: Path, seconds: float = 4.0) -> Path:
    """A moving test picture as an mp4 (a colour sweep), to loop behind the twin."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        ys, xs = np.mgrid[0:360, 0:640]
        for index in range(int(seconds * 25)):
            rgb = np.stack([(xs + 4 * index) % 256, (ys + 2 * index) % 256, np.full_like(xs, 120)], -1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def compose(frames: int) -> list[dict[str, Any]]:
    """Time the compose step per configuration (ms per frame, p50 / p99 / mean)."""
    pack = demo_pack(cache_dir(), progress=False)
    spec = load_spec(demo_model(cache_dir()))
    assets = TwinAssets.from_pack(AvatarPack.load(pack), spec)
    face = np.random.default_rng(0).uniform(-1, 1, (3, spec.crop_px, spec.crop_px)).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        video = Background.video(_loop_video(Path(folder) / "loop.mp4"), (720, 1280))
        configurations: list[tuple[str, tuple[int, int] | None, Background | None, bool]] = [
            ("pack frame 384x384", None, None, False), ("pack frame 384x384 + 4 elements", None, None, True),
            ("720x1280, colour", (720, 1280), None, False), ("720x1280, colour + 4 elements", (720, 1280), None, True),
            ("720x1280, looping video + 4 elements", (720, 1280), video, True),
            ("1080x1920, colour + 4 elements", (1080, 1920), None, True)]
        for name, size, background, elements in configurations:
            compositor = Compositor(assets, 25, canvas=size, background=background)
            if elements:
                _elements(compositor)
            for index in range(30):  # warm-up: caches, the badge's first drawing
                compositor.compose_i420(index, index % assets.base_count, face)
            timings = []
            for index in range(frames):
                started = time.perf_counter()
                compositor.compose_i420(30 + index, index % assets.base_count, face)
                timings.append(1000 * (time.perf_counter() - started))
            rows.append({"configuration": name, "frames": frames, "p50_ms": round(float(np.percentile(timings, 50)), 2),
                         "p99_ms": round(float(np.percentile(timings, 99)), 2),
                         "mean_ms": round(float(np.mean(timings)), 2)})
    return rows


def live(seconds: float) -> list[dict[str, Any]]:
    """The demo live, without and with the 9:16 canvas and its elements; 0 and 1 viewers each."""
    rows = []
    for label, flags in (("pack frame 384x384", []), ("720x1280 + 4 elements", ["--canvas", "720x1280"])):
        with tempfile.TemporaryDirectory() as commerce, ServerProcess(
                "demo", "--port", "0", "-q", *flags, env={"TWINCAST_SERVE_COMMERCE_DIR": commerce}) as server:
            if flags:
                _show_elements(server)
            time.sleep(3.0)  # warm-up effects settle
            for viewers in (0, 1):
                stats = server.get("/api/stats")[1]
                row = measure(server, seconds, viewers)
                after = server.get("/api/stats")[1]
                rows.append({"frame": label, **row, "compose_ms_p50": after["compose_ms_p50"],
                             "compose_ms_p99": after["compose_ms_p99"], "frame_size": after["frame_size"],
                             "late_before": stats["late_frames"]})
    return rows


def _show_elements(server: ServerProcess) -> None:
    assert server.post("/api/products", CARD)[0] == 201
    picture = io.BytesIO()
    Image.open("assets/portrait.png").save(picture, "PNG")
    requests.put(server.url + "/api/products/jacket/picture", data=picture.getvalue(), timeout=30,
                 headers={"Content-Type": "application/octet-stream", **server.auth}).raise_for_status()
    for kind, body in (("card", {"product": "jacket"}), ("lower_third", {"title": "Mia Chen", "subtitle": "host"}),
                       ("badge", {"text": "-34%", "detail": "today only", "ends_in_s": 3600}),
                       ("ticker", {"text": "Free shipping over $50 · ask your questions in the chat"})):
        assert server.post(f"/api/overlays/{kind}", body)[0] == 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["compose", "live"])
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    rows = compose(args.frames) if args.what == "compose" else live(args.seconds)
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
                      "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows},
                     indent=1))


if __name__ == "__main__":
    main()
