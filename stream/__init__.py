"""Live stage: an engine and an avatar pack become a live twin, streamed to WebRTC viewers.

Who owns what: ``runtime.TwinRuntime`` owns the twins, engines, the render worker and one ``channel.Channel``
per session; a channel owns its ``session.TwinSession`` (the timeline) and everything attached to it (viewers,
microphone/webcam peers, RTMP pushes and recordings, the script).

The path of frame *n*, from the clock tick to the encoder (K = the mel window's look-ahead in frames, L = the
render lead, both in ``TwinSession``):

1. **Tick** *j = n + K* (``TwinSession.run`` → ``_tick``, on the event loop, at the session clock's deadline
   *j*): the next queued ``AudioChunk`` (``audio_queue.AudioQueue``) becomes frame *j*'s audio.
2. **Inputs** (``TwinSession._submit(n)``): the pose driver picks the base frame (``pose.PoseController``);
   the engine inputs are that base frame's masked crop and the reference (``assets.TwinAssets``, prepared
   once), the mel window around *n* from the audio ring, and the fixed noise; they travel in a
   ``render_worker.RenderJob``.
3. **Render** (``render_worker.RenderWorker``, its own thread): jobs of all sessions of one engine are
   batched into one ``Engine`` call.
4. **Compose** (the job's ``paste_back``, still on the worker thread): ``canvas.Compositor.compose_i420`` pastes
   the rendered face into its full base frame with the feathered mask (``TwinAssets.compose``), converts it to
   yuv420p, scales it into its place on the broadcast canvas when there is one (``serve.canvas``), and blends
   the on-screen elements shown at frame *n* (``overlays.OverlayLayer``).
5. **Deliver** (``call_soon_threadsafe`` → ``TwinSession._deliver``, on the loop): the frame is stored in the
   session's video ring; one of an interrupted generation is dropped.
6. **Egress** (``tracks.TwinVideoTrack.recv``): at deadline *n + K + L* the track takes frame *n* (if it is
   missing: the last render for a frame or two, then *n*'s un-rendered base frame, composed the same way;
   ``TwinSession.video_i420``),
   stamps its pts, and aiortc's ``MediaRelay`` hands it to every viewer's sender, which encodes it (VP8 or
   H.264), and to the outputs (``outputs.StreamOutput``: libx264 to RTMP or MP4). ``tracks.TwinAudioTrack``
   releases *n*'s two 20 ms audio blocks at the same deadline.
"""
