"""Live stage: an engine and an avatar pack become a live twin, streamed to WebRTC viewers."""
