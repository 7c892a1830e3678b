"""docker-compose.yml is checked with Debian's docker-compose (``config`` needs no Docker engine), and the Janus and
coturn configs it mounts from deploy/ are loaded by Debian's janus and turnserver, the packages its images install.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from aioice import stun, turn

from stream.config import ServeConfig
from stream.ice import turn_credentials
from tests.helpers import wait_until
from tests.stream.rtmp_ingest import free_port
from twincast.config import build_config

ROOT = Path(__file__).resolve().parent.parent
SECRET = "compose-turn-secret-0123456789abcdef"
REQUIRED = {"TWINCAST_OPERATOR_TOKEN": "t", "TWINCAST_SERVE_TURN_SECRET": SECRET,
            "TWINCAST_PUBLIC_HOST": "twin.example.com"}
SERVICES = {"build-engine", "twincast", "janus", "coturn", "nginx-rtmp"}


def _config(env: dict[str, str], *, without: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` with ``env`` on top of this environment, less the variables in ``without``."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is missing: install Debian's docker-compose (make test does this as root)")
    environment = {key: value for key, value in {**os.environ, **env}.items() if key not in without}
    return subprocess.run([binary, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True,
                          text=True, env=environment, cwd=ROOT, timeout=60, check=False)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The resolved compose file, with the required variables set and the twin named shop."""
    result = _config({**REQUIRED, "TWINCAST_AVATAR": "shop"})
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = yaml.safe_load(result.stdout)
    return document


def test_compose_runs_twincast_serve_on_an_nvidia_gpu() -> None:
    result = _config({**REQUIRED, "TWINCAST_AVATAR": "shop"})
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "driver: nvidia" in text
    assert "- gpu" in text and "count: 1" in text
    assert "network_mode: host" in text  # WebRTC media needs the host's UDP ports
    assert "/data/avatars/shop" in text and "/data/models/shop/twin.onnx" in text
    assert "- serve" in text
    assert "TWINCAST_SERVE_MAX_BATCH: '16'" in text or "TWINCAST_SERVE_MAX_BATCH: \"16\"" in text


@pytest.mark.parametrize("missing", ["TWINCAST_OPERATOR_TOKEN", "TWINCAST_SERVE_TURN_SECRET", "TWINCAST_PUBLIC_HOST"])
def test_compose_refuses_to_start_without_a_required_variable(missing: str) -> None:
    result = _config(REQUIRED, without=(missing,))
    assert result.returncode != 0
    assert missing in result.stderr


def test_compose_has_the_services_the_volume_and_the_local_test_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == SERVICES
    assert services["nginx-rtmp"]["profiles"] == ["local-test"]
    assert all("profiles" not in services[name] for name in SERVICES - {"nginx-rtmp"})
    for name in ("twincast", "janus", "coturn"):  # WebRTC and TURN use many UDP ports
        assert services[name]["network_mode"] == "host", name
    for name in ("twincast", "build-engine"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}], name
    assert "plans" in compose["volumes"]
    plans = "plans:/data/models/shop/plans:rw"
    assert plans in services["build-engine"]["volumes"] and plans in services["twincast"]["volumes"]
    assert services["twincast"]["depends_on"]["build-engine"] == {"condition": "service_completed_successfully"}
    assert services["build-engine"]["command"][:3] == ["twincast", "build-engine", "/data/models/shop/twin.onnx"]
    assert services["twincast"]["image"] == services["build-engine"]["image"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM nvcr\.io/nvidia/tensorrt:", dockerfile, re.MULTILINE)  # TensorRT and CUDA inside


def test_twincast_publishes_to_janus_and_shares_the_turn_secret_with_coturn(compose: dict[str, Any]) -> None:
    services = compose["services"]
    command = services["twincast"]["command"]
    target = command[command.index("--publish") + 1]
    assert target == "janus://127.0.0.1:8088/1234"
    http_conf = (ROOT / "deploy" / "janus" / "janus.transport.http.jcfg").read_text()
    assert re.search(r"^\s*port = 8088$", http_conf, re.MULTILINE)
    assert "room-1234" in (ROOT / "deploy" / "janus" / "janus.plugin.videoroom.jcfg").read_text()

    environment = services["twincast"]["environment"]
    assert environment["TWINCAST_SERVE_TURN_SECRET"] == SECRET
    assert f"--static-auth-secret={SECRET}" in services["coturn"]["command"]
    assert "--realm=twin.example.com" in services["coturn"]["command"]
    conf = (ROOT / "deploy" / "coturn" / "turnserver.conf").read_text()
    assert re.search(r"^use-auth-secret$", conf, re.MULTILINE) and "static-auth-secret" not in conf.replace(
        "--static-auth-secret", "")  # the secret comes from the environment, never from the file
    port = re.search(r"^listening-port=(\d+)$", conf, re.MULTILINE)
    assert port is not None
    # twincast takes what compose gives it: the environment, and the --publish flag
    config = build_config(ServeConfig, section="serve", env=environment, overrides={"publish": [target]})
    assert config.turn_urls == (f"turn:twin.example.com:{port.group(1)}?transport=udp",
                                f"turn:twin.example.com:{port.group(1)}?transport=tcp")
    assert config.turn_secret == SECRET and config.publish == (target,)


@pytest.fixture()
def janus_conf(tmp_path: Path) -> Path:
    """deploy/janus copied, pointed at its new folder and a free HTTP port."""
    if shutil.which("janus") is None:
        pytest.fail("janus is missing: install Debian's janus (apt-get install janus; make test does this as root)")
    port = free_port()
    for source in (ROOT / "deploy" / "janus").glob("*.jcfg"):
        text = source.read_text().replace("/etc/twincast-janus", str(tmp_path)).replace("port = 8088", f"port = {port}")
        (tmp_path / source.name).write_text(text)
    (tmp_path / "port").write_text(str(port))
    return tmp_path


def _janus(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     method="GET" if body is None else "POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        reply: dict[str, Any] = json.loads(response.read())
        return reply


def _answering(url: str) -> dict[str, Any] | None:
    try:
        return _janus(url)
    except OSError:
        return None


@pytest.fixture()
def janus(janus_conf: Path) -> Iterator[str]:
    """Debian's janus running the deploy config; its REST API's URL."""
    with (janus_conf / "janus.log").open("wb") as log:
        process = subprocess.Popen(["janus", "-F", str(janus_conf), "-C", str(janus_conf / "janus.jcfg")],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{(janus_conf / 'port').read_text()}/janus"
    try:
        wait_until(lambda: process.poll() is not None or _answering(url + "/info"), 20, every_s=0.1,
                   what="Janus answering with the deploy config")
        assert process.poll() is None, (janus_conf / "janus.log").read_text()[-3000:]
        yield url
    finally:
        process.kill()
        process.wait(timeout=10)


def test_janus_runs_the_deploy_config_with_twincasts_room(janus: str) -> None:
    info = _janus(janus + "/info")
    assert list(info["plugins"]) == ["janus.plugin.videoroom"]  # only what twincast needs is loaded
    assert list(info["transports"]) == ["janus.transport.http"]
    session = _janus(janus, {"janus": "create", "transaction": "s"})["data"]["id"]
    handle = _janus(f"{janus}/{session}", {"janus": "attach", "plugin": "janus.plugin.videoroom",
                                          "transaction": "a"})["data"]["id"]
    reply = _janus(f"{janus}/{session}/{handle}", {"janus": "message", "transaction": "e",
                                                  "body": {"request": "exists", "room": 1234}})
    assert reply["plugindata"]["data"]["exists"] is True


def _listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port`` (coturn listens on TCP and UDP alike)."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_coturn_runs_the_deploy_config_and_takes_twincasts_credentials(tmp_path: Path) -> None:
    if shutil.which("turnserver") is None:
        pytest.fail("turnserver is missing: install Debian's coturn (apt-get install coturn; make test does this as "
                    "root)")
    port = free_port()
    log = tmp_path / "turnserver.log"
    with log.open("wb") as out:  # the config logs to stdout, as a container should
        process = subprocess.Popen(["turnserver", "-c", str(ROOT / "deploy" / "coturn" / "turnserver.conf"),
                                    "--listening-ip", "127.0.0.1", "--listening-port", str(port), "--relay-ip",
                                    "127.0.0.1", "--realm", "twin.example.com", f"--static-auth-secret={SECRET}",
                                    "--pidfile", str(tmp_path / "turnserver.pid")],
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: process.poll() is not None or _listening(port), 20, every_s=0.1,
                   what="coturn listening with the deploy config")
        assert process.poll() is None, log.read_text()[-3000:]
        good = turn_credentials(SECRET, "viewer", int(time.time()) + 600)
        wrong = turn_credentials("not-the-" + SECRET, "viewer", int(time.time()) + 600)

        async def allocations() -> tuple[Any, int]:
            transport, _ = await turn.create_turn_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", port), *good)
            relayed = transport.get_extra_info("sockname")
            transport.close()
            try:
                await turn.create_turn_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", port), *wrong)
            except stun.TransactionFailed as exc:
                return relayed, int(exc.response.attributes["ERROR-CODE"][0])
            return relayed, 200

        relayed, refused = asyncio.run(asyncio.wait_for(allocations(), 30))
        assert relayed[0] == "127.0.0.1" and 49152 <= relayed[1] <= 65535  # the conf's relay port range
        assert refused == 401
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_local_test_rtmp_ingest_config_is_valid_for_debians_nginx_rtmp() -> None:
    if shutil.which("nginx") is None or not Path("/etc/nginx/modules-enabled/50-mod-rtmp.conf").exists():
        pytest.fail("nginx with libnginx-mod-rtmp is missing: apt-get install nginx libnginx-mod-rtmp")
    result = subprocess.run(["nginx", "-t", "-c", str(ROOT / "deploy" / "nginx-rtmp" / "nginx.conf")],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
