"""Footage stage: a video of a person (or a portrait + speech, synthesised) becomes an avatar pack."""
