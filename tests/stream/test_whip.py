"""WHIP (RFC 9725) both ways, with real aiortc peers on loopback.

In: an aiortc WHIP client sends what OBS Studio sends (H.264 video of a face and Opus speech, sendonly, the operator
token as its bearer token) to ``POST /whip``; the twin speaks with that voice and turns its head with that face.

Out: a WHIP endpoint written here (aiohttp + aiortc, as a streaming service runs one) takes what
``POST /api/outputs {"kind": "whip"}`` publishes, goes away, comes back, and is told (DELETE) when the output is
removed or the server stops.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer

from stream.whep_client import ReceivedMedia, drain
from tests.helpers import AUTH, ServerProcess, measured, wait_until

SESSION = "whip-in"
ENDPOINT_TOKEN = "endpoint-secret-token-9876"


# --- WHIP in: an OBS-like client --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def whip_session(server: ServerProcess) -> Iterator[str]:
    """A session of its own on the shared server (a WHIP video moves its head; the other tests' twin keeps still)."""
    twin = server.get("/api/sessions")[1]["twins"][0]
    assert server.post("/api/sessions", {"id": SESSION, "twin": twin})[0] == 201
    yield SESSION
    server.delete(f"/api/sessions/{SESSION}")


async def obs_like_offer(player: MediaPlayer | None = None) -> tuple[RTCPeerConnection, str]:
    """A peer and its offer as OBS Studio makes one: sendonly H.264 video and sendonly Opus audio (``player``'s
    tracks; without one, transceivers only, for offers that are never connected)."""
    sources: tuple[MediaStreamTrack | str, MediaStreamTrack | str] = ("video", "audio")
    if player is not None:
        assert player.video is not None and player.audio is not None
        sources = (player.video, player.audio)
    peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video = peer.addTransceiver(sources[0], direction="sendonly")
    video.setCodecPreferences([codec for codec in RTCRtpSender.getCapabilities("video").codecs
                               if codec.mimeType.lower() == "video/h264"])
    peer.addTransceiver(sources[1], direction="sendonly")
    await peer.setLocalDescription(await peer.createOffer())
    return peer, str(peer.localDescription.sdp)


async def post_whip(http: aiohttp.ClientSession, url: str, offer: str, token: str) -> tuple[int, str, Any]:
    """POST an offer to ``/whip`` as a WHIP client does; returns (status, Location, body as text or JSON)."""
    async with http.post(f"{url}/whip?session={SESSION}", data=offer,
                         headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"}) as response:
        body: Any = await response.json() if response.content_type == "application/json" else await response.text()
        return response.status, response.headers.get("Location", ""), body


def session_stats(server: ServerProcess) -> dict[str, Any]:
    return server.get("/api/stats")[1]["sessions"][SESSION]


def test_whip_ingest_from_an_obs_like_client_speaks_and_turns_the_head(server: ServerProcess, whip_session: str,
                                                                       clip: Path) -> None:
    marks: dict[str, Any] = {}

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        player = MediaPlayer(str(clip), loop=True)  # the clip's face and espeak-ng speech, over and over
        peer, offer = await obs_like_offer(player)
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            status, location, answer = await post_whip(http, server.url, offer, server.token)
            assert status == 201 and location.startswith("/whip/"), (status, answer)
            marks["answer"] = answer
            await peer.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

            def spoke_and_turned() -> dict[str, Any] | None:
                stats = session_stats(server)
                if stats["speaking"] and "speaking_s" not in marks:
                    marks["speaking_s"] = time.monotonic() - started
                upstreams = stats["upstreams"]
                turned = stats["pose"]["mode"] == "webcam" and upstreams and upstreams[0]["measured"] >= 10
                return stats if "speaking_s" in marks and turned else None

            marks["during"] = await loop.run_in_executor(None, lambda: wait_until(
                spoke_and_turned, 20, every_s=0.1, what="the twin speaking and its head following the WHIP video"))
            marks["measured_s"] = time.monotonic() - started
            async with http.delete(server.url + location, headers=AUTH) as response:
                marks["deleted"] = response.status
            async with http.delete(server.url + location, headers=AUTH) as response:
                marks["deleted_again"] = response.status
        await peer.close()
        for track in (player.video, player.audio):
            if track is not None:
                track.stop()  # the player's thread ends with its tracks

    asyncio.run(scenario())
    video_section = marks["answer"].split("m=video")[1]
    assert "H264/90000" in video_section and "opus/48000" in marks["answer"]  # OBS's codecs, answered as such
    upstream = marks["during"]["upstreams"][0]
    assert upstream["kind"] == "whip" and upstream["frames"] > 50, upstream
    assert marks["deleted"] == 200 and marks["deleted_again"] == 404
    assert wait_until(lambda: session_stats(server)["upstreams"] == [], 5, what="the WHIP session gone")
    told = [e["message"] for e in server.get("/api/log")[1]["events"] if e["session"] == SESSION]
    assert "whip connected (audio and video)" in told and "whip disconnected" in told, told
    measured("whip_ingest", speaking_after_s=marks["speaking_s"], head_measured_10_after_s=marks["measured_s"])


def libdatachannel_offer() -> str:
    """An offer shaped as OBS Studio's WHIP output (libdatachannel) writes one: ICE and DTLS lines at the session
    level, Opus with stereo and in-band FEC, H.264 constrained baseline with packetization-mode 1, sendonly."""
    fingerprint = ":".join(["AB"] * 32)
    return "\r\n".join([
        "v=0", "o=rtc 3537771488 0 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1", "a=group:LS 0 1",
        "a=msid-semantic:WMS *", "a=setup:actpass", "a=ice-ufrag:obsx", "a=ice-pwd:obsobsobsobsobsobsobsobs",
        "a=ice-options:ice2,trickle", f"a=fingerprint:sha-256 {fingerprint}",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", "a=mid:0", "a=sendonly", "a=ssrc:1111 cname:obs",
        "a=msid:obs audio", "a=rtcp-mux", "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;maxaveragebitrate=96000;stereo=1;sprop-stereo=1;useinbandfec=1",
        "a=candidate:1 1 UDP 2122317823 127.0.0.1 9 typ host", "a=end-of-candidates",
        "m=video 9 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 0.0.0.0", "a=mid:1", "a=sendonly", "a=ssrc:2222 cname:obs",
        "a=msid:obs video", "a=rtcp-mux", "a=rtpmap:96 H264/90000", "a=rtcp-fb:96 nack", "a=rtcp-fb:96 nack pli",
        "a=fmtp:96 profile-level-id=42e01f;packetization-mode=1;level-asymmetry-allowed=1", ""])


def test_whip_ingest_answers_obs_offers_and_refuses_a_wrong_token_and_junk(server: ServerProcess,
                                                                          whip_session: str) -> None:
    async def scenario() -> list[tuple[int, str, Any]]:
        peer, offer = await obs_like_offer()
        receive_only = offer.replace("a=sendonly", "a=recvonly")
        await peer.close()
        async with aiohttp.ClientSession() as http:
            replies = [await post_whip(http, server.url, libdatachannel_offer(), server.token),
                       await post_whip(http, server.url, offer, "wrong-token-123"),
                       await post_whip(http, server.url, "hello, this is not an offer", server.token),
                       await post_whip(http, server.url, "v=0\r\nm=video\r\n", server.token),
                       await post_whip(http, server.url, receive_only, server.token)]
            async with http.delete(server.url + replies[0][1], headers=AUTH) as response:
                replies.append((response.status, "", ""))
            return replies

    obs, wrong_token, junk, malformed, receive_only, hung_up = asyncio.run(scenario())
    assert obs[0] == 201 and obs[1].startswith("/whip/"), obs
    assert "a=rtpmap:96 H264/90000" in obs[2] and "a=rtpmap:111 opus/48000/2" in obs[2] and hung_up[0] == 200
    assert wrong_token[0] == 401 and "bearer token" in wrong_token[2]["error"], wrong_token
    assert junk[0] == 400 and "no audio or video section" in junk[2]["error"], junk
    assert malformed[0] == 400 and "could not be parsed" in malformed[2]["error"], malformed
    assert receive_only[0] == 400 and "recvonly" in receive_only[2]["error"], receive_only
    assert session_stats(server)["upstreams"] == []  # nothing was left half made


# --- WHIP out: an endpoint on loopback --------------------------------------------------------------------------

class WhipEndpoint:
    """A WHIP endpoint on loopback (aiohttp + aiortc), as a streaming service runs one: it answers an offer that
    brings its bearer token (``201``, ``Location``), keeps what arrives in ``media``, ends a session on DELETE.
    ``stop`` hangs up every peer and closes the port; ``start`` opens the same port again."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.port = 0
        self.media = ReceivedMedia()
        self.sessions: dict[str, RTCPeerConnection] = {}
        self.answered: list[str] = []  # session ids, in order
        self.deleted: list[str] = []
        self.refused = 0
        self._drains: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/whip/endpoint"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/whip/endpoint", self._offer)
        app.router.add_delete("/whip/endpoint/{session_id}", self._delete)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        for peer in list(self.sessions.values()):
            await peer.close()  # its DTLS close tells the publisher at once
        self.sessions.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for task in self._drains:
            task.cancel()
        await asyncio.gather(*self._drains, return_exceptions=True)

    async def _offer(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            self.refused += 1
            return web.Response(status=401, text="wrong or missing bearer token")
        peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        peer.on("track", lambda track: self._drains.append(asyncio.ensure_future(drain(track, self.media, 30))))
        await peer.setRemoteDescription(RTCSessionDescription(sdp=await request.text(), type="offer"))
        await peer.setLocalDescription(await peer.createAnswer())
        session_id = uuid.uuid4().hex
        self.sessions[session_id] = peer
        self.answered.append(session_id)
        return web.Response(status=201, text=peer.localDescription.sdp, content_type="application/sdp",
                            headers={"Location": f"/whip/endpoint/{session_id}"})

    async def _delete(self, request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        peer = self.sessions.pop(session_id, None)
        if peer is None:
            return web.Response(status=404)
        self.deleted.append(session_id)
        await peer.close()
        return web.Response(status=200)


def output_row(server: ServerProcess, output_id: str) -> dict[str, Any]:
    return next(o for o in server.get("/api/outputs")[1]["outputs"] if o["id"] == output_id)


def test_whip_output_publishes_reconnects_and_hangs_up(server: ServerProcess) -> None:
    marks: dict[str, Any] = {}

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        async def until(probe: Any, timeout_s: float, what: str) -> Any:
            return await loop.run_in_executor(None, lambda: wait_until(probe, timeout_s, every_s=0.1, what=what))

        async def call(method: Any, *args: Any) -> Any:
            return await loop.run_in_executor(None, method, *args)

        endpoint = WhipEndpoint(ENDPOINT_TOKEN)
        await endpoint.start()
        try:
            status, output = await call(server.post, "/api/outputs",
                                        {"kind": "whip", "url": endpoint.url, "token": ENDPOINT_TOKEN})
            assert status == 201, output
            marks["created"] = output
            output_id = output["id"]
            started = time.monotonic()
            await until(lambda: output_row(server, output_id)["state"] == "live", 20, "the output live")
            marks["live_s"] = time.monotonic() - started
            await until(lambda: len(endpoint.media.video_pts) >= 50 and endpoint.media.audio_seconds >= 1.0, 20,
                        "two seconds of video and audio at the endpoint")
            marks["frame_shape"] = endpoint.media.video[-1].shape
            marks["frame_size"] = (await call(server.get, "/api/stats"))[1]["frame_size"]

            await endpoint.stop()  # the endpoint goes away ...
            down = time.monotonic()
            marks["reconnecting"] = await until(
                lambda: (row := output_row(server, output_id))["state"] == "reconnecting" and row["reconnects"] >= 1
                and row, 20, "the output reconnecting")
            marks["noticed_s"] = time.monotonic() - down
            await until(lambda: output_row(server, output_id)["reconnects"] >= 2, 20, "a retry refused")
            frames_before = len(endpoint.media.video_pts)
            await endpoint.start()  # ... and comes back on the same port: the output publishes again by itself
            back = time.monotonic()
            marks["again"] = await until(lambda: (row := output_row(server, output_id))["state"] == "live"
                                         and row["connects"] >= 2 and row, 40, "the output live again")
            marks["live_again_s"] = time.monotonic() - back
            await until(lambda: len(endpoint.media.video_pts) >= frames_before + 25, 20, "video again")

            status, final = await call(server.delete, f"/api/outputs/{output_id}")
            assert status == 200, final
            marks["final"] = final
            marks["deleted"] = list(endpoint.deleted)
            marks["open_sessions"] = len(endpoint.sessions)
            marks["answered"] = list(endpoint.answered)

            status, refused = await call(server.post, "/api/outputs",
                                         {"kind": "whip", "url": endpoint.url, "token": "not-the-endpoint-token"})
            marks["refused"] = await until(
                lambda: (row := output_row(server, refused["id"]))["state"] == "reconnecting" and row, 20,
                "a refused output reconnecting")
            await call(server.delete, f"/api/outputs/{refused['id']}")
            marks["bad_url"] = await call(server.post, "/api/outputs", {"kind": "whip", "url": "ftp://x/whip"})
        finally:
            await endpoint.stop()

    asyncio.run(scenario())
    created = marks["created"]
    assert created["kind"] == "whip" and created["token"] == "********9876"
    assert marks["frame_shape"][:2] == tuple(marks["frame_size"][::-1]), marks  # the session's size
    assert marks["reconnecting"]["error"], marks["reconnecting"]  # says why
    assert marks["again"]["reconnects"] >= 2
    final = marks["final"]
    assert final["state"] == "stopped" and final["video_frames"] > 50 and final["audio_frames"] > 50, final
    assert marks["answered"][-1] in marks["deleted"] and marks["open_sessions"] == 0, marks  # DELETE on removal
    assert "401" in marks["refused"]["error"], marks["refused"]
    assert marks["bad_url"][0] == 400 and "WHIP url" in marks["bad_url"][1]["error"], marks["bad_url"]
    shown = json.dumps([marks["created"], marks["reconnecting"], marks["again"], final, marks["refused"]])
    assert ENDPOINT_TOKEN not in shown and "not-the-endpoint-token" not in shown  # masked in every response
    leaked = [line for line in server.lines if ENDPOINT_TOKEN in line or "not-the-endpoint-token" in line]
    assert not leaked, leaked  # and never logged
    measured("whip_output", live_after_s=marks["live_s"], outage_noticed_after_s=marks["noticed_s"],
             live_again_after_endpoint_back_s=marks["live_again_s"], reconnects=marks["again"]["reconnects"])


def test_whip_output_hangs_up_when_the_server_stops(pack: Path, artifact: Path) -> None:
    marks: dict[str, Any] = {}

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        endpoint = WhipEndpoint(ENDPOINT_TOKEN)
        await endpoint.start()
        stopping = ServerProcess("serve", "--avatar", str(pack), "--model", str(artifact), "--port", "0")
        try:
            await loop.run_in_executor(None, stopping.__enter__)
            status, output = await loop.run_in_executor(None, stopping.post, "/api/outputs",
                                                        {"kind": "whip", "url": endpoint.url, "token": ENDPOINT_TOKEN})
            assert status == 201, output
            await loop.run_in_executor(None, lambda: wait_until(
                lambda: output_row(stopping, output["id"])["state"] == "live", 20, what="the output live"))
        finally:
            await loop.run_in_executor(None, stopping.__exit__, None, None, None)  # SIGTERM, as a service manager
            marks.update(answered=list(endpoint.answered), deleted=list(endpoint.deleted), open=len(endpoint.sessions))
            await endpoint.stop()
        assert stopping.process is not None
        marks["exit"] = stopping.process.returncode

    asyncio.run(scenario())
    assert marks["exit"] == 0 and marks["answered"] and marks["deleted"] == marks["answered"], marks
    assert marks["open"] == 0, marks  # the server said goodbye before it went
