"""twincast for pipecat: a self-hosted, per-person twin as a pipecat video service.

``TwincastVideoService`` drives a twin from a pipeline (and in ``return`` mode brings its pictures and sound back);
``AvatarPushClient`` is the framework-free client of twincast's avatar protocol underneath it;
``EspeakTTSService`` is an offline TTS for examples and tests.
"""

from twincast_pipecat.espeak_tts import EspeakTTSService
from twincast_pipecat.push_client import AvatarPushClient, PushError, Ready, SpeakingEvent, Status
from twincast_pipecat.video_service import TwincastVideoService
from twincast_pipecat.whep import TwinReceiver, WhepError

__all__ = ["AvatarPushClient", "EspeakTTSService", "PushError", "Ready", "SpeakingEvent", "Status",
           "TwinReceiver", "TwincastVideoService", "WhepError"]
