"""A real nginx-rtmp ingest on a free loopback port, for output tests."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RtmpIngest:
    """nginx with libnginx-mod-rtmp in the foreground; ``url(key)`` is where to push, records under ``root``."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        if shutil.which("nginx") is None or not MODULE.exists():
            raise AssertionError("nginx with libnginx-mod-rtmp is missing: apt-get install nginx libnginx-mod-rtmp")
        self.root = root
        self.port = port or free_port()
        (root / "rec").mkdir(parents=True, exist_ok=True)
        (root / "logs").mkdir(exist_ok=True)
        self.config = root / "nginx.conf"
        self.config.write_text(f"""
load_module {MODULE};
worker_processes 1;
error_log {root}/logs/error.log info;
pid {root}/nginx.pid;
events {{ worker_connections 64; }}
rtmp {{
  server {{
    listen 127.0.0.1:{self.port};
    chunk_size 4096;
    application live {{
      live on;
      record all;
      record_path {root}/rec;
      record_unique off;
    }}
  }}
}}
""")
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, key: str) -> str:
        """The push (and play) URL of stream ``key``."""
        return f"rtmp://127.0.0.1:{self.port}/live/{key}"

    def start(self) -> RtmpIngest:
        """Start nginx and wait until it accepts connections."""
        self.process = subprocess.Popen(["nginx", "-p", str(self.root), "-c", str(self.config), "-g",
                                         "daemon off; master_process off;"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        self.stop()
        raise AssertionError("nginx-rtmp did not start:\n" + (self.root / "logs/error.log").read_text()[-2000:])

    def stop(self) -> None:
        """Stop nginx (the ingest goes away)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> RtmpIngest:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def ffprobe(target: str, timeout_s: float = 30) -> dict[str, dict[str, str]]:
    """ffprobe's view of a file or stream: {"video": {...}, "audio": {...}} stream fields, plus "format"."""
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-rw_timeout", "10000000", "-show_entries",
         "stream=codec_type,codec_name,r_frame_rate,avg_frame_rate,sample_rate,width,height:format=duration",
         "-of", "json", target] if target.startswith("rtmp") else
        ["ffprobe", "-v", "error", "-show_entries",
         "stream=codec_type,codec_name,r_frame_rate,avg_frame_rate,sample_rate,width,height:format=duration",
         "-of", "json", target],
        capture_output=True, text=True, timeout=timeout_s, check=False)
    if result.returncode != 0:
        raise AssertionError(f"ffprobe {target} failed: {result.stderr[-1000:]}")
    parsed = json.loads(result.stdout)
    streams = {stream["codec_type"]: stream for stream in parsed.get("streams", [])}
    streams["format"] = parsed.get("format", {})
    return streams
