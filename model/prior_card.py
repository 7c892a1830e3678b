"""A prior's model card and its use by a new twin: reading the card, loading a prior's weights into a network
(``initialise_from``, which ``model.train`` calls), and choosing the prior a new twin starts from (the one asked
for, none, or the one that ships). ``model.prior`` trains priors and writes the card.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from model.checkpoint import ROLE_FILES, load_checkpoint
from model.config import ModelConfig
from model.networks import TwinDenoiser
from twincast.errors import InputError, NotFoundError
from twincast.files import sha256_file

CARD_FILE = "prior.json"
CARD_KIND = "twincast prior"
CARD_VERSION = 1
UNKNOWN_LICENCE = "unknown"
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "assets" / "prior"
# The model settings a prior and the twin started from it must share: they decide the weights' shapes and what
# the weights mean. ``mask_top`` (where the generated region starts) and ``sample_steps`` (inference) may differ.
MATCHING_FIELDS = ("preset", "crop_px", "patch_px", "channels", "blocks_per_level", "attention", "audio_dim",
                   "time_dim", "groups", "mel_bins", "mel_frames", "latent_channels", "ae_channels")
AUTOENCODER_PREFIX = "autoencoder."


def read_card(prior: Path) -> dict[str, Any]:
    """The model card of the prior directory ``prior`` (a path to its checkpoint is taken as its directory).

    Raises:
        NotFoundError: no such directory, or it holds no model card (it is not a prior).
        InputError: the card is not one this version wrote.
    """
    directory = prior.parent if prior.is_file() else prior
    card_file = directory / CARD_FILE
    if not directory.is_dir():
        raise NotFoundError(f"prior {prior} does not exist; expected a directory made by twincast prior")
    if not card_file.is_file():
        raise NotFoundError(f"{directory} is not a prior: it has no {CARD_FILE} (make one with twincast prior)")
    try:
        card = json.loads(card_file.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{card_file} is not readable JSON ({exc})") from exc
    if not isinstance(card, dict) or card.get("kind") != CARD_KIND or card.get("version") != CARD_VERSION:
        raise InputError(f"{card_file} is not a twincast prior card of version {CARD_VERSION}")
    return card


def initialise_from(network: TwinDenoiser, prior: Path, *, role: str = "teacher") -> dict[str, Any]:
    """Load the prior's weights into ``network`` — its teacher's, or with ``role="student"`` its distilled
    student's — (all but a latent model's autoencoder, which stays the person's own) and return what a run
    records about its start: the prior's path, card hash, preset and the role loaded.

    Raises:
        NotFoundError, InputError: ``prior`` is not a prior (``read_card``), has no student when one is asked
            for, or its model differs from the network's in a setting of ``MATCHING_FIELDS`` (each named, with
            both values).
    """
    card = read_card(prior)
    directory = prior.parent if prior.is_file() else prior
    if role == "student" and "student" not in card:
        raise NotFoundError(f"prior {directory} has no distilled student; make one with twincast prior-distill "
                            f"{directory}, or start from the run's teacher")
    checkpoint = load_checkpoint(directory, role)
    differ = model_differences(asdict(checkpoint.model), network.config)
    if differ:
        raise InputError(f"prior {directory} was trained with another model: {'; '.join(differ)}; train with "
                         f"--config {checkpoint.model.preset} on a pack of crop {checkpoint.model.crop_px}, or "
                         "choose another prior (or --from-scratch)")
    weights = {key: value for key, value in checkpoint.state_dict.items() if not key.startswith(AUTOENCODER_PREFIX)}
    missing, unexpected = network.load_state_dict(weights, strict=False)
    missed = [key for key in missing if not key.startswith(AUTOENCODER_PREFIX)]
    if missed or unexpected:
        raise InputError(f"prior {directory}'s weights do not fit this model: missing {missed[:3]}, "
                         f"unexpected {unexpected[:3]}")
    origin = {"path": str(directory.resolve()), "card_sha256": sha256_file(directory / CARD_FILE),
              "preset": checkpoint.model.preset}
    return origin if role == "teacher" else {**origin, "role": role}


def model_differences(prior_model: dict[str, Any], model: ModelConfig) -> list[str]:
    """Each setting of ``MATCHING_FIELDS`` in which ``model`` differs from a prior's model (as its card or
    checkpoint records it), named with both values."""
    mine = asdict(model)
    return [f"{name} {prior_model.get(name)} (prior) vs {mine[name]} (this model)" for name in MATCHING_FIELDS
            if _same_kind(prior_model.get(name), mine[name]) != mine[name]]


def _same_kind(value: Any, like: Any) -> Any:
    """A card's JSON value as the config holds it (JSON has lists where the config has tuples)."""
    return tuple(value) if isinstance(like, tuple) and isinstance(value, list) else value


def shipped_prior(preset_name: str, root: Path = SHIPPED_DIR) -> Path | None:
    """The prior that ships for ``preset_name`` (``assets/prior/<preset>/`` holding a model card and a
    checkpoint), or None when none does."""
    directory = root / preset_name
    if (directory / CARD_FILE).is_file() and (directory / ROLE_FILES["teacher"]).is_file():
        return directory
    return None


def choose_prior(preset_name: str, *, prior: Path | None, from_scratch: bool,
                 model: ModelConfig | None = None) -> tuple[Path | None, str]:
    """The prior a new twin of ``preset_name`` starts from, and a sentence saying which and why: the one asked
    for, none with ``from_scratch``, else the shipped one for the preset when there is one and it fits ``model``
    (when given: a pack enrolled at another crop size than the shipped prior's starts from scratch, saying so;
    a prior asked for by name that does not fit is refused when its weights are loaded).

    Raises:
        InputError: both a prior and ``from_scratch`` were asked for, or the prior asked for is of another preset.
        NotFoundError, InputError: the prior asked for is not one (``read_card``).
    """
    if prior is not None and from_scratch:
        raise InputError(f"a prior ({prior}) and --from-scratch were both given; choose one")
    if from_scratch:
        return None, "from scratch (--from-scratch)"
    if prior is not None:
        card = read_card(prior)
        if card.get("preset") != preset_name:
            raise InputError(f"prior {prior} is a {card.get('preset')} prior, and this is a {preset_name} model; "
                             f"choose a {preset_name} prior, or --from-scratch")
        return prior, f"from the prior {prior}"
    shipped = shipped_prior(preset_name)
    if shipped is None:
        return None, f"from scratch: no prior ships for size {preset_name} (assets/prior/{preset_name}/)"
    differ = [] if model is None else model_differences(read_card(shipped).get("model", {}), model)
    if differ:
        return None, f"from scratch: the shipped {preset_name} prior does not fit this model ({'; '.join(differ)})"
    return shipped, f"from the shipped {preset_name} prior ({shipped})"


def student_start(preset_name: str, prior: Path | None) -> tuple[Path | None, str]:
    """Where a new student starts, and a sentence saying so: as a copy of the run's teacher (``prior`` None, the
    default), or as the distilled student of ``prior``.

    A copy of the person's teacher is the default because it is the better start: from the demo prior's student,
    300 steps of distillation left the held-out people's students near the untuned prior student's 20 dB, where
    the teacher's copy gave 35-36 dB (BENCHMARKS.md, "A prior student"): consistency distillation pulls the
    student toward its own slow copy and reaches the teacher's knowledge of the person only slowly.

    Raises:
        InputError: the prior is of another preset.
        NotFoundError: the prior holds no student, or is not a prior.
    """
    if prior is None:
        return None, "from a copy of the run's teacher"
    chosen, text = choose_prior(preset_name, prior=prior, from_scratch=False)
    if "student" not in read_card(prior):
        raise NotFoundError(f"prior {prior} has no distilled student; make one with twincast prior-distill {prior}, "
                            "or leave out --from to start from the run's teacher")
    return chosen, text.replace("from the ", "from the student of the ", 1)
