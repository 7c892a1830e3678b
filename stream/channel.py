"""A channel: one live session and everything attached to it — its producer task, its video source, its script,
its show and chat inbox (``production``), its WHEP viewers, the operator's microphone, webcam and WHIP ingest peers,
and its RTMP pushes, recordings, WHIP publishes and Janus VideoRoom publishes.

The channel is the one owner of those: it adds and removes them, closes them all when it closes, and turns what
they announce (the session's ``speaking``/``late``/…, a peer's state, an output's state) into event-log lines.

A viewer leaves by ``DELETE /whep/{id}``, by closing its peer (its DTLS close reaches the server, whose
connection state turns ``closed``), or silently (a crashed browser, a lost network): the channel's viewer watch
drops any viewer that has sent no RTCP receiver report for ``viewer_timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.contrib.media import MediaRelay
from aiortc.sdp import SessionDescription

from stream.encode_once import SharedAudio, SharedVideo
from stream.events import EventLog, Tally
from stream.janus_output import JanusOutput
from stream.outputs import Output, StreamOutput, check_target
from stream.peers import Census, Viewer, answer, close_peer, prefer_codec
from stream.production import Production
from stream.script import Script
from stream.session import Spawn, TwinSession
from stream.stats import EncodeStats, SessionStats
from stream.tracks import OwnFrames, TwinAudioTrack, TwinVideoTrack
from stream.upstream import PoseMeter, Upstream, consume_microphone, consume_webcam
from stream.whip_output import WhipOutput
from twincast.errors import InputError

log = logging.getLogger(__name__)
UPSTREAM_MEDIA = {"mic": ("audio",), "webcam": ("video",), "whip": ("audio", "video")}  # what each kind may send


class Channel:
    """One session and its viewers, inputs and outputs (see the module docstring).

    The session's video track is made once and relayed (``MediaRelay``) to every viewer and output: it is
    rendered and converted once. With ``encode="shared"`` (the default) its direct viewers share one video and one
    Opus encoder (``stream.encode_once``: a viewer that joins or asks for a keyframe gets keyframes of its own);
    with ``"per-viewer"`` each viewer's sender encodes its own copy (``tracks.OwnFrames``) and its own audio
    track. An output copies each frame on its encoder thread, and reads an audio track of its own, paced on the
    same session clock.
    """

    def __init__(self, session: TwinSession, *, relay: MediaRelay, census: Census, events: EventLog, spawn: Spawn,
                 video_codec: str, viewer_timeout_s: float, encode: str = "shared") -> None:
        self.session = session
        self.script = Script()
        self.production = Production(session, spawn, lambda message, level: self._note("show", message, level))
        self.viewers: dict[str, Viewer] = {}
        self.upstreams: dict[str, Upstream] = {}
        self.outputs: dict[str, Output] = {}
        self._pose_meter: PoseMeter | None = None  # made at the first webcam, serves every later one
        self.video_source = TwinVideoTrack(session)
        self._relay = relay
        self._census = census
        self._viewer_timeout_s = viewer_timeout_s
        self._events = events
        self._spawn = spawn
        self._video_codec = video_codec
        self._encode = encode
        self._shared_video = SharedVideo(video_codec, session.clock.fps,
                                         lambda: self._census.subscribe(self._relay, self.video_source), spawn)
        self._shared_audio = SharedAudio(lambda: TwinAudioTrack(self.session), spawn)
        self._tallies = {
            "late": Tally(lambda count: self._warn(f"{count} frames rendered late")),
            "live_dropped": Tally(lambda count: self._warn(f"{count} frames of live audio dropped to keep "
                                                           "latency bounded")),
        }
        session.on("speaking", lambda on: self._note("speech", "speaking" if on else "silent"))
        session.on("late", lambda frame_index: self._tallies["late"].add())
        session.on("live_dropped", lambda frames: self._tallies["live_dropped"].add(frames))
        session.on("pose_fallback", lambda: self._warn("webcam lost: back to the footage loop"))
        session.on("degraded", lambda reason: self._warn(f"degraded: {reason}; viewers see the idle footage loop"))
        session.on("recovered", lambda seconds: self._note("health", f"recovered: rendering again after "
                                                                     f"{seconds:.1f} s degraded"))
        session.on("speech_failed", lambda message: self._note("speech", message, "error"))
        self.producer = spawn(session.run(), f"session-{session.session_id}")
        self.viewer_watch = spawn(self._watch_viewers(), f"viewer-watch-{session.session_id}")

    @property
    def session_id(self) -> str:
        """The session's id."""
        return self.session.session_id

    def _note(self, kind: str, message: str, level: str = "info") -> None:
        self._events.emit(kind, message, session=self.session_id, level=level)

    def _warn(self, message: str) -> None:
        self._note("warning", message, "warning")

    # --- viewers ---------------------------------------------------------------------------------------------

    async def add_viewer(self, offer_sdp: str) -> tuple[str, str]:
        """Answer a WHEP offer; returns (viewer id, answer SDP).

        Raises:
            InputError: the offer is not a usable SDP offer with a video section.
        """
        if "m=video" not in offer_sdp:
            raise InputError("the SDP offer has no video section (m=video); expected a recvonly video offer")
        viewer = Viewer(self._census.new_peer())
        peer = viewer.peer
        if self._encode == "shared":
            video = self._shared_video.subscribe()
            video_sender = peer.addTrack(video)
            video.attach(video_sender)
            prefer_codec(peer, peer.addTrack(self._shared_audio.subscribe()), "audio", "opus")
        else:
            video_sender = peer.addTrack(OwnFrames(self._census.subscribe(self._relay, self.video_source)))
            peer.addTrack(TwinAudioTrack(self.session))
        prefer_codec(peer, video_sender, "video", self._video_codec)
        try:
            sdp = await answer(peer, offer_sdp)
        except InputError:
            _stop_tracks(peer)
            raise
        self.viewers[viewer.viewer_id] = viewer
        self._note("viewer", f"{len(self.viewers)} viewer(s)")

        @peer.on("connectionstatechange")
        async def on_state() -> None:
            if peer.connectionState in ("failed", "closed"):
                await self.remove_viewer(viewer.viewer_id)

        return viewer.viewer_id, sdp

    async def _watch_viewers(self) -> None:
        """Drop viewers not heard from (no RTCP receiver report) for ``viewer_timeout_s``, checking a few times
        per timeout: a vanished viewer would otherwise be encoded for until ICE consent expires (about 30 s)."""
        check_s = min(1.0, self._viewer_timeout_s / 4)
        while True:
            await asyncio.sleep(check_s)
            await self._drop_silent_viewers()  # in a call of its own, so no viewer stays referenced between checks

    async def _drop_silent_viewers(self) -> None:
        for viewer in list(self.viewers.values()):
            silent_s = time.monotonic() - await viewer.listen()
            if silent_s > self._viewer_timeout_s and viewer.viewer_id in self.viewers:
                self._warn(f"viewer {viewer.viewer_id[:8]} silent for {silent_s:.1f} s: dropped")
                await self.remove_viewer(viewer.viewer_id)

    async def remove_viewer(self, viewer_id: str) -> bool:
        """Close a viewer's connection; False when this channel has no such viewer."""
        viewer = self.viewers.pop(viewer_id, None)
        if viewer is None:
            return False
        await close_peer(viewer.peer)
        _stop_tracks(viewer.peer)  # a sender that never started (closed while connecting) never stops its track
        self._note("viewer", f"{len(self.viewers)} viewer(s)")
        return True

    # --- upstream peers --------------------------------------------------------------------------------------

    async def add_upstream(self, kind: str, offer_sdp: str) -> tuple[str, str]:
        """Accept the operator's microphone (``mic``), webcam (``webcam``) or WHIP client's (``whip``: audio and/or
        video) offer; returns (id, answer SDP). Audio becomes the twin's live speech, video drives its head.

        Raises:
            InputError: an unknown kind, or an offer without the media that kind sends (see ``_upstream_media``).
        """
        media = _upstream_media(kind, offer_sdp)
        peer = self._census.new_peer()
        upstream = Upstream(uuid.uuid4().hex, kind, self.session, peer)

        @peer.on("track")
        def on_track(track: Any) -> None:
            if track.kind in media:
                consume = (consume_microphone(track, upstream) if track.kind == "audio" else
                           consume_webcam(track, upstream, self._webcam_meter()))
                upstream.consumers.append(self._spawn(consume, f"{kind}-{track.kind}-{upstream.upstream_id}"))

        @peer.on("connectionstatechange")
        async def on_state() -> None:
            if peer.connectionState in ("failed", "closed"):
                await self.remove_upstream(upstream.upstream_id)

        sdp = await answer(peer, offer_sdp)
        self.upstreams[upstream.upstream_id] = upstream
        self._note("input", f"{kind} connected" + (f" ({' and '.join(media)})" if kind == "whip" else ""))
        return upstream.upstream_id, sdp

    def _webcam_meter(self) -> PoseMeter:
        if self._pose_meter is None:
            self._pose_meter = PoseMeter()
        return self._pose_meter

    async def remove_upstream(self, upstream_id: str) -> bool:
        """Close an upstream peer and stop its consumer; False when there is no such one."""
        upstream = self.upstreams.pop(upstream_id, None)
        if upstream is None:
            return False
        await close_peer(upstream.peer)
        for consumer in upstream.consumers:
            consumer.cancel()
        await asyncio.gather(*upstream.consumers, return_exceptions=True)
        self._note("input", f"{upstream.kind} disconnected")
        return True

    # --- outputs ---------------------------------------------------------------------------------------------

    def add_output(self, kind: str, target: str, token: str | None = None) -> Output:
        """Start pushing the session to RTMP, recording it to MP4, or publishing it to a WHIP endpoint (``target``
        its URL, ``token`` its bearer token if it wants one) or into a Janus VideoRoom (``target`` a ``janus://``
        URL).

        Raises:
            InputError: a bad kind or target (see ``outputs.check_target``, ``whip_output.check_whip_url``,
                ``janus_output.parse_target``).
        """
        output: Output
        output_id = uuid.uuid4().hex[:12]
        if kind == "whip":
            output = WhipOutput(output_id, self.session_id, target, token, tracks=self._output_tracks,
                                new_peer=self._census.new_peer, on_state=self._output_state)
        elif kind == "janus":
            output = JanusOutput(output_id, self.session_id, target, video_codec=self._video_codec,
                                 tracks=self._output_tracks, new_peer=self._census.new_peer,
                                 on_state=self._output_state)
        else:
            target = check_target(kind, target)  # before subscribing: a refused target leaves no subscription
            video = self._census.subscribe(self._relay, self.video_source)  # the output encodes a copy of its own
            output = StreamOutput(output_id, self.session_id, kind, target, video, TwinAudioTrack(self.session),
                                  self.session.frame_size, self.session.clock.fps, on_state=self._output_state)
        output.start(self._spawn)
        self.outputs[output.output_id] = output
        self._note("output", f"{kind} output started: {output.describe()['target']}")
        return output

    def _output_tracks(self) -> tuple[MediaStreamTrack, MediaStreamTrack]:
        """A WHIP or Janus publish's tracks for one connection: the relayed video (a copy of each frame of its
        own, as a viewer's) and an audio track of its own."""
        return OwnFrames(self._census.subscribe(self._relay, self.video_source)), TwinAudioTrack(self.session)

    def _output_state(self, output: Output) -> None:
        if output.output_id not in self.outputs:
            return  # stopped on purpose: remove_output says so
        described = output.describe()
        message = f"{output.kind} {described['target']}: {output.state}" + (f" ({output.error})" if output.error
                                                                             else "")
        level = {"reconnecting": "warning", "failed": "error"}.get(output.state, "info")
        self._note("output", message, level)

    async def remove_output(self, output_id: str) -> Output | None:
        """Stop an output (finishing a recording); None when this channel has no such output."""
        output = self.outputs.pop(output_id, None)
        if output is None:
            return None
        await output.stop()
        self._note("output", f"{output.kind} output stopped: {output.describe()['target']}")
        return output

    # --- lifecycle and reporting -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Close every viewer, upstream (and the webcams' pose meter) and output, then stop the producer and the
        video source."""
        self.viewer_watch.cancel()
        await asyncio.gather(self.viewer_watch, return_exceptions=True)
        for viewer_id in list(self.viewers):
            await self.remove_viewer(viewer_id)
        for upstream_id in list(self.upstreams):
            await self.remove_upstream(upstream_id)
        if self._pose_meter is not None:
            self._pose_meter.close()
        for output_id in list(self.outputs):
            await self.remove_output(output_id)
        await self.production.close()
        self.producer.cancel()
        await asyncio.gather(self.producer, return_exceptions=True)
        self.video_source.stop()
        for tally in self._tallies.values():
            tally.close()
        self.session.remove_all_listeners()

    def peers(self) -> list[RTCPeerConnection]:
        """Every open peer connection of this channel (viewers, upstreams, WHIP and Janus publishes)."""
        publishing = [output.peer for output in self.outputs.values()
                      if isinstance(output, WhipOutput | JanusOutput) and output.peer is not None]
        return [viewer.peer for viewer in self.viewers.values()] + [up.peer for up in self.upstreams.values()] + \
            publishing

    def stats(self) -> SessionStats:
        """The session's timeline figures plus its viewers, inputs and outputs."""
        counts = self._shared_video.counts
        encode: EncodeStats = {"mode": self._encode, "shared_frames": counts.shared_frames,
                               "private_frames": counts.private_frames, "shared_keyframes": counts.shared_keyframes,
                               "repairs": counts.repairs}
        return {**self.session.stats(), "viewers": len(self.viewers), "encode": encode,
                "outputs": [output.describe() for output in self.outputs.values()],
                "upstreams": [upstream.describe() for upstream in self.upstreams.values()]}


def _stop_tracks(peer: RTCPeerConnection) -> None:
    """Stop the tracks ``peer``'s senders still hold (a shared encoder's subscriptions end with them)."""
    for sender in peer.getSenders():
        if sender.track is not None:
            sender.track.stop()


def _upstream_media(kind: str, offer_sdp: str) -> tuple[str, ...]:
    """The media an upstream of ``kind`` takes from ``offer_sdp`` (a parseable offer: ``http_common.check_sdp``).

    A microphone's offer needs an audio section and a webcam's a video one. A WHIP client's needs one audio and/or
    one video section, each sending (sendonly or sendrecv): the twin speaks with the one and moves its head with
    the other.

    Raises:
        InputError: an unknown kind, or an offer without (or with more than one of) what that kind sends.
    """
    wanted = UPSTREAM_MEDIA.get(kind)
    if wanted is None:
        raise InputError(f"upstream kind {kind!r} must be one of {sorted(UPSTREAM_MEDIA)}")
    sections = SessionDescription.parse(offer_sdp).media
    if kind != "whip":
        if not any(section.kind == wanted[0] for section in sections):
            raise InputError(f"the {kind} offer has no {wanted[0]} section (m={wanted[0]})")
        return wanted
    found = [section.kind for section in sections if section.kind in wanted]
    if not found:
        raise InputError("the WHIP offer has no audio or video section (m=audio, m=video); expected one sendonly "
                         "audio (Opus) and/or one sendonly video (H.264 or VP8) section, as OBS Studio sends")
    for media in wanted:
        if found.count(media) > 1:
            raise InputError(f"the WHIP offer has {found.count(media)} {media} sections; expected at most one audio "
                             "and one video section")
    for section in sections:
        direction = section.direction or "sendrecv"  # SDP's default
        if section.kind in wanted and direction not in ("sendonly", "sendrecv"):
            raise InputError(f"the WHIP offer's m={section.kind} section is {direction}; a WHIP client "
                             "sends its media (a=sendonly)")
    return tuple(media for media in wanted if media in found)  # audio first, whatever the offer's order
