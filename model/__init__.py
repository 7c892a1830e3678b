"""Training stage: an avatar pack becomes a per-person renderer (checkpoints that carry their config)."""
