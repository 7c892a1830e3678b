"""The prior: one network trained on several people (``model.prior``), and twins whose training starts from it.

The people are the two the repository has portraits of: the committed demo portrait (the session's ``pack``)
and Grace Hopper (``new_person_clip``, enrolled here at the same 64² crop). Tests that need them are in the
integration tier (their fixtures run the CLI chain); the augmentation and the latent-model loading are unit tests.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import TrainConfig, preset
from model.prior import (
    NO_AUGMENTATION,
    Augmentation,
    Draw,
    MultiPackSampler,
    apply_augmentation,
    draw_augmentation,
    train_prior,
)
from model.prior_card import CARD_FILE, CARD_KIND, CARD_VERSION, initialise_from, shipped_prior
from tests.helpers import run_cli
from twincast.errors import InputError
from twincast.files import sha256_file

TINY = preset("tiny", crop_px=64, mask_top=0.55).model
LATENT = preset("tiny-latent", crop_px=64, mask_top=0.55).model
LATENT_CONFIG = TrainConfig(steps=4, autoencoder_steps=6, batch_size=4, threads=2)


@pytest.fixture(scope="module")
def hopper_pack(workdir: Path, new_person_clip: Path) -> Path:
    """The second person: the Grace Hopper clip enrolled at the same 64² crop as the session's pack."""
    out = workdir / "hopper-pack-64"
    if not out.exists():
        run_cli("enroll", str(new_person_clip), "--out", str(out), "--crop-px", "64", "-q")
    return out


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory: pytest.TempPathFactory, hopper_pack: Path, pack: Path) -> Path:
    """A tiny prior trained on both people for a few dozen steps."""
    out = tmp_path_factory.mktemp("prior") / "tiny"
    train_prior([hopper_pack, pack], out, TINY, TrainConfig(steps=40, threads=2), licences=["public domain",
                                                                                           "public domain"],
                progress=False)
    return out


@pytest.fixture(scope="module")
def latent_prior(tmp_path_factory: pytest.TempPathFactory, hopper_pack: Path, pack: Path) -> Path:
    """A tiny latent prior of both people: a shared autoencoder, then the teacher, a few steps each."""
    out = tmp_path_factory.mktemp("latent-prior") / "tiny-latent"
    train_prior([hopper_pack, pack], out, LATENT, LATENT_CONFIG, progress=False)
    return out


# --- augmentation (unit) ---------------------------------------------------------------------------------------

def _images(count: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand((count, 3, 64, 64), generator=torch.Generator().manual_seed(seed)) * 1.6 - 0.8


def _draw(count: int, **values: float) -> Draw:
    """Every sample with the same given values; the rest leave the picture as it is."""
    neutral = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "scale": 1.0, "rotation_deg": 0.0}
    fields = {name: torch.full((count,), float(values.get(name, default))) for name, default in neutral.items()}
    return Draw(flipped=torch.full((count,), bool(values.get("flipped", False))), **fields)


def test_augmentation_draws_stay_within_the_documented_ranges() -> None:
    augmentation = Augmentation()
    draw = draw_augmentation(4000, augmentation, torch.Generator().manual_seed(1))
    for name, centre, half in (("brightness", 1.0, augmentation.brightness), ("contrast", 1.0, augmentation.contrast),
                               ("saturation", 1.0, augmentation.saturation), ("scale", 1.0, augmentation.scale),
                               ("rotation_deg", 0.0, augmentation.rotation_deg)):
        values = getattr(draw, name)
        assert values.min() >= centre - half and values.max() <= centre + half, name
        assert values.min() < centre - 0.9 * half and values.max() > centre + 0.9 * half, name  # the range is used
    assert 0.45 < draw.flipped.float().mean() < 0.55
    with pytest.raises(InputError, match="augmentation rotation_deg 40"):
        Augmentation(rotation_deg=40)


def test_augmentation_changes_pixels_as_each_transform_says() -> None:
    images = _images()
    unit = images.add(1).div(2)
    none = draw_augmentation(4, NO_AUGMENTATION, torch.Generator().manual_seed(0))
    torch.testing.assert_close(apply_augmentation(images, none), images)
    torch.testing.assert_close(apply_augmentation(images, _draw(4, brightness=1.1)),
                               (unit * 1.1).clamp(0, 1).mul(2).sub(1))
    torch.testing.assert_close(apply_augmentation(images, _draw(4, flipped=True)), images.flip(3))
    grey = (unit * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    desaturated = apply_augmentation(images, _draw(4, saturation=0.0)).add(1).div(2)
    torch.testing.assert_close(desaturated, grey.expand_as(unit))
    mixed = apply_augmentation(images, draw_augmentation(4, Augmentation(), torch.Generator().manual_seed(2)))
    assert mixed.min() >= -1 and mixed.max() <= 1
    assert (mixed - images).abs().mean() > 0.01  # the default ranges do change the picture


def _centroid(image: torch.Tensor) -> tuple[float, float]:
    """(row, col) of an image's brightness, relative to its centre, in pixels."""
    weight = image.add(1).sum(0)
    rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    total = weight.sum()
    return float((weight * rows).sum() / total) - 31.5, float((weight * cols).sum() / total) - 31.5


def test_the_affine_zooms_and_rotates_about_the_centre() -> None:
    rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    blob = torch.exp(-((rows - 31.5) ** 2 + (cols - 51.5) ** 2) / 8.0)  # 20 px right of the centre
    image = (blob * 2 - 1).expand(3, 64, 64).unsqueeze(0)
    row, col = _centroid(apply_augmentation(image, _draw(1, scale=1.2, rotation_deg=10.0))[0])
    assert math.hypot(row, col) == pytest.approx(20 * 1.2, abs=1.0)
    assert abs(math.degrees(math.atan2(row, col))) == pytest.approx(10.0, abs=1.5)


def test_a_latent_prior_loads_the_denoiser_and_leaves_the_persons_autoencoder(tmp_path: Path) -> None:
    from model.networks import TwinDenoiser

    config = preset("tiny-latent", crop_px=64, mask_top=0.55).model
    torch.manual_seed(0)
    prior_network = TwinDenoiser(config)
    # Only the loading is tested here, so the prior is written by hand: a teacher checkpoint and a card beside it.
    save_checkpoint(tmp_path / "prior" / "checkpoint.pt", model=config, train=TrainConfig(),
                    state_dict=prior_network.state_dict(), step=1, pack={})
    (tmp_path / "prior" / CARD_FILE).write_text(json.dumps({"kind": CARD_KIND, "version": CARD_VERSION,
                                                            "preset": config.preset}))
    torch.manual_seed(1)
    person = TwinDenoiser(config)
    assert person.autoencoder is not None
    own_autoencoder = {key: value.clone() for key, value in person.autoencoder.state_dict().items()}
    record = initialise_from(person, tmp_path / "prior")
    assert record["card_sha256"] == sha256_file(tmp_path / "prior" / CARD_FILE)
    for key, value in prior_network.state_dict().items():
        if not key.startswith("autoencoder."):
            torch.testing.assert_close(person.state_dict()[key], value)
    for key, value in person.autoencoder.state_dict().items():
        torch.testing.assert_close(value, own_autoencoder[key])
    assert any(not torch.equal(own_autoencoder[key], value)
               for key, value in prior_network.autoencoder.state_dict().items())  # type: ignore[union-attr]


def test_no_prior_ships_where_the_directory_is_empty(tmp_path: Path) -> None:
    assert shipped_prior("demo", root=tmp_path) is None
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / CARD_FILE).write_text("{}")
    assert shipped_prior("demo", root=tmp_path) is None  # a card without its checkpoint is not a prior
    (tmp_path / "demo" / "checkpoint.pt").write_bytes(b"")
    assert shipped_prior("demo", root=tmp_path) == tmp_path / "demo"


# --- several people (integration: real packs) -----------------------------------------------------------------

def test_the_sampler_draws_both_people_and_augments_target_and_reference_alike(hopper_pack: Path,
                                                                               pack: Path) -> None:
    from avatar.pack import AvatarPack

    packs = [AvatarPack.load(hopper_pack), AvatarPack.load(pack)]
    augmented, plain = MultiPackSampler(packs), MultiPackSampler(packs, NO_AUGMENTATION)
    batch = augmented.draw(16, torch.Generator().manual_seed(5))
    same = plain.draw(16, torch.Generator().manual_seed(5))  # the same frames: augmentation draws come last
    assert augmented.last_draw is not None
    torch.testing.assert_close(batch.mel, same.mel)
    assert (batch.target - same.target).abs().mean() > 0.01
    torch.testing.assert_close(batch.target, apply_augmentation(same.target, augmented.last_draw))
    torch.testing.assert_close(batch.reference, apply_augmentation(same.reference, augmented.last_draw))
    # Which person and frame each un-augmented crop is: every target and its reference are training frames
    # (never the holdout block) of one person, and the people are drawn about equally.
    import numpy as np

    frames: dict[bytes, tuple[int, int]] = {}
    for person, one in enumerate(packs):
        crops = np.asarray(one.array("crops"))
        frames.update({crops[index].tobytes(): (person, int(index)) for index in range(len(crops))})

    def which(image: torch.Tensor) -> tuple[int, int]:
        return frames[image.add(1).mul(127.5).round().byte().permute(1, 2, 0).numpy().tobytes()]

    many = plain.draw(400, torch.Generator().manual_seed(6))
    drawn = [(which(target), which(reference)) for target, reference in zip(many.target, many.reference,
                                                                            strict=True)]
    assert all(target[0] == reference[0] and target[1] != reference[1] for target, reference in drawn)
    train_frames = [set(one.train_indices().tolist()) for one in packs]
    assert all(frame in train_frames[person] for pair in drawn for person, frame in pair)
    assert 0.4 < sum(target[0] for target, _ in drawn) / len(drawn) < 0.6


def test_the_model_card_lists_the_packs_and_the_training(prior_dir: Path, hopper_pack: Path, pack: Path) -> None:
    card = json.loads((prior_dir / CARD_FILE).read_text())
    assert [entry["path"] for entry in card["packs"]] == [str(hopper_pack), str(pack)]
    assert all(entry["frames"] > 100 and entry["licence"] == "public domain" for entry in card["packs"])
    assert card["packs"][1]["source"]["name"] == "clip.mp4"
    assert card["steps"] == 40 and card["batch_size"] == 8 and card["preset"] == "tiny"
    assert card["augmentation"]["rotation_deg"] == Augmentation().rotation_deg
    assert card["final_loss"] < card["loss_every_10"][0]
    assert card["checkpoint_sha256"] == sha256_file(prior_dir / "checkpoint.pt")
    assert load_checkpoint(prior_dir).step == 40


def test_packs_of_another_crop_size_or_unpaired_licences_are_refused(tmp_path: Path, new_person_clip: Path,
                                                                     hopper_pack: Path, pack: Path) -> None:
    bigger = tmp_path / "hopper-96"
    run_cli("enroll", str(new_person_clip), "--out", str(bigger), "--crop-px", "96", "-q")
    with pytest.raises(InputError, match=r"crop size \(crop_px\) 96, but .* has 64"):
        train_prior([pack, bigger], tmp_path / "p", TINY, TrainConfig(steps=1), progress=False)
    with pytest.raises(InputError, match="1 --licence given for 2 packs"):
        train_prior([pack, hopper_pack], tmp_path / "p", TINY, TrainConfig(steps=1), licences=["CC0"],
                    progress=False)
    assert not (tmp_path / "p").exists()


# --- fine-tuning from it --------------------------------------------------------------------------------------

def test_fine_tuning_starts_from_the_prior_and_records_it(prior_dir: Path, pack: Path, tmp_path: Path) -> None:
    from model.train import train

    # A learning rate of 1e-12 leaves the weights where step 0 found them (to float precision).
    still = TrainConfig(steps=1, learning_rate=1e-12, threads=2)
    train(pack, tmp_path / "tuned", TINY, still, progress=False, init_from=prior_dir)
    train(pack, tmp_path / "scratch", TINY, still, progress=False)
    prior, tuned, scratch = (load_checkpoint(path) for path in (prior_dir, tmp_path / "tuned", tmp_path / "scratch"))
    for key, value in prior.state_dict.items():
        torch.testing.assert_close(tuned.state_dict[key], value, rtol=0, atol=1e-6)
    assert any(not torch.allclose(scratch.state_dict[key], value, atol=1e-3) for key, value in prior.state_dict.items())
    record = {"path": str(prior_dir.resolve()), "card_sha256": sha256_file(prior_dir / CARD_FILE), "preset": "tiny"}
    assert tuned.extra["init_from"] == record
    assert json.loads((tmp_path / "tuned" / "train.json").read_text())["init_from"] == record
    assert json.loads((tmp_path / "scratch" / "train.json").read_text())["init_from"] is None


def test_fine_tuning_can_keep_part_of_the_prior_as_it_is(prior_dir: Path, pack: Path, tmp_path: Path) -> None:
    from model.train import train

    train(pack, tmp_path / "run", TINY, TrainConfig(steps=3, threads=2), progress=False, init_from=prior_dir,
          freeze=("audio", "audio_proj"))
    prior, tuned = load_checkpoint(prior_dir).state_dict, load_checkpoint(tmp_path / "run").state_dict
    frozen = [key for key in prior if key.startswith(("audio.", "audio_proj."))]
    assert frozen and all(torch.equal(tuned[key], prior[key]) for key in frozen)
    assert any(not torch.equal(tuned[key], prior[key]) for key in prior if key.startswith("up."))
    assert json.loads((tmp_path / "run" / "train.json").read_text())["frozen"] == ["audio", "audio_proj"]
    with pytest.raises(InputError, match=r"cannot freeze \['mouth'\]: expected top-level modules .*'audio_proj'"):
        train(pack, tmp_path / "other", TINY, TrainConfig(steps=1, threads=2), progress=False, freeze=("mouth",))


def test_a_prior_of_other_people_lowers_the_loss_of_a_new_persons_first_steps(hopper_pack: Path, pack: Path,
                                                                             tmp_path: Path) -> None:
    """The prior has seen only Hopper; the twin is the other person. Same seed, same batches, same noise: the
    run that starts from the prior has the lower loss over its first 15 steps, by a wide margin: with these
    settings, 3 prior seeds × 6 seeds gave a ratio of 0.24-0.31 (0.17-0.25 against 0.61-0.92 from scratch).
    At this size much of that is the prior having learnt to denoise a face at all, not this person."""
    from model.train import train

    prior = tmp_path / "hopper-prior"
    train_prior([hopper_pack], prior, TINY, TrainConfig(steps=80, threads=2), progress=False)
    for seed in (0, 1):
        config = TrainConfig(steps=15, threads=2, seed=seed)
        tuned = train(pack, tmp_path / f"tuned-{seed}", TINY, config, progress=False, init_from=prior)
        scratch = train(pack, tmp_path / f"scratch-{seed}", TINY, config, progress=False)
        assert tuned.final_loss < 0.5 * scratch.final_loss, (seed, tuned.final_loss, scratch.final_loss)


def test_a_prior_of_another_preset_is_refused_naming_what_differs(prior_dir: Path, pack: Path,
                                                                  tmp_path: Path) -> None:
    from model.networks import TwinDenoiser

    demo = preset("demo", crop_px=64, mask_top=0.55).model
    with pytest.raises(InputError, match=r"preset tiny \(prior\) vs demo \(this model\).*channels"):
        initialise_from(TwinDenoiser(demo), prior_dir)
    result = run_cli("train", str(pack), "--config", "demo", "--out", str(tmp_path / "run"), "--from",
                     str(prior_dir), "--steps", "1", check=False)
    assert result.returncode == 2
    assert "is a tiny prior, and this is a demo model" in result.stderr
    assert not (tmp_path / "run").exists()
    result = run_cli("train", str(pack), "--out", str(tmp_path / "run"), "--from", str(pack), check=False)
    assert result.returncode != 0 and "is not a prior: it has no prior.json" in result.stderr


def test_the_cli_trains_a_prior_and_a_twin_from_it(hopper_pack: Path, pack: Path, tmp_path: Path) -> None:
    prior = tmp_path / "prior"
    made = run_cli("prior", str(hopper_pack), str(pack), "--out", str(prior), "--config", "tiny", "--steps", "20",
                   "-q")
    assert json.loads(made.stdout.strip().splitlines()[-1])["steps"] == 20
    card = json.loads((prior / CARD_FILE).read_text())
    assert [entry["licence"] for entry in card["packs"]] == ["unknown", "unknown"]  # none given: said so
    assert card["steps"] == 20 and "none was given" in card["licence_note"]
    run = tmp_path / "run"
    trained = run_cli("train", str(pack), "--out", str(run), "--from", str(prior), "--steps", "10", "-q")
    assert json.loads(trained.stdout.strip().splitlines()[-1])["init_from"] == str(prior)
    assert load_checkpoint(run).extra["init_from"]["card_sha256"] == sha256_file(prior / CARD_FILE)
    both = run_cli("train", str(pack), "--out", str(tmp_path / "x"), "--from", str(prior), "--from-scratch",
                   check=False)
    assert both.returncode == 2 and "choose one" in both.stderr


def test_a_prior_student_is_distilled_on_the_priors_people_and_carded(prior_dir: Path, tmp_path: Path) -> None:
    prior = tmp_path / "prior"
    shutil.copytree(prior_dir, prior)
    made = run_cli("prior-distill", str(prior), "--steps", "6", "-q")
    assert json.loads(made.stdout.strip().splitlines()[-1])["steps"] == 6
    card = json.loads((prior / CARD_FILE).read_text())
    student = card["student"]
    assert student["checkpoint"] == "student.pt" and student["steps"] == 6
    assert student["checkpoint_sha256"] == sha256_file(prior / "student.pt")
    assert student["distill"]["batch_size"] == 8 and len(student["loss_every_10"]) == 1  # the tiny distill preset
    assert math.isfinite(student["final_loss"])
    checkpoint = load_checkpoint(prior, "student")
    assert checkpoint.role == "student" and checkpoint.pack["prior"] is True
    teacher = load_checkpoint(prior)
    assert any(not torch.equal(value, teacher.state_dict[key]) for key, value in checkpoint.state_dict.items())
    again = run_cli("prior-distill", str(prior), "--steps", "1", check=False)
    assert again.returncode == 2 and "already holds a student" in again.stderr
    moved = run_cli("prior-distill", str(prior), "--steps", "1", "--force", "--pack", str(tmp_path / "gone"),
                    check=False)
    assert moved.returncode == 2 and "1 packs given for a prior of 2" in moved.stderr


def test_distillation_starts_from_the_prior_student_and_records_it(prior_dir: Path, pack: Path,
                                                                   tmp_path: Path) -> None:
    from model.distill import TINY_DISTILL, Distiller
    from model.prior import distill_prior
    from model.train import train

    prior = tmp_path / "prior"
    shutil.copytree(prior_dir, prior)
    run = tmp_path / "run"
    train(pack, run, TINY, TrainConfig(steps=10, threads=2), progress=False, init_from=prior)
    teacher = load_checkpoint(run).build()

    without = run_cli("distill", str(run), "--from", str(prior), "--steps", "1", check=False)
    assert without.returncode != 0 and f"prior {prior} has no distilled student" in without.stderr
    distill_prior(prior, replace(TINY_DISTILL, steps=4, threads=2), progress=False)

    # The student, θ⁻ and the EMA start as the prior's student, not as copies of the person's teacher.
    config = replace(TINY_DISTILL, ema_decay=0.9, threads=2)
    started = Distiller.start(teacher, config, init_from=prior)
    prior_student = load_checkpoint(prior, "student").state_dict
    assert started.ema is not None
    for network in (started.student, started.target_network, started.ema):
        for key, value in network.state_dict().items():
            torch.testing.assert_close(value, prior_student[key].float(), rtol=0, atol=0)
    assert any(not torch.equal(value, teacher.state_dict()[key]) for key, value in prior_student.items())
    assert started.init_from == {"path": str(prior.resolve()), "card_sha256": sha256_file(prior / CARD_FILE),
                                 "preset": "tiny", "role": "student"}

    made = run_cli("distill", str(run), "--from", str(prior), "--steps", "3", "-q")
    said = json.loads(made.stdout.strip().splitlines()[-1])
    assert said["init_from"] == str(prior) and said["start"] == f"from the student of the prior {prior}"
    assert f"distill: from the student of the prior {prior}" in made.stderr
    assert load_checkpoint(run, "student").extra["init_from"] == started.init_from
    assert json.loads((run / "distill.json").read_text())["init_from"] == started.init_from
    copied = run_cli("distill", str(run), "--steps", "3", "--force", "-q")  # the default: the teacher's copy
    said = json.loads(copied.stdout.strip().splitlines()[-1])
    assert said["init_from"] is None and said["start"] == "from a copy of the run's teacher"
    assert json.loads((run / "distill.json").read_text())["init_from"] is None


def test_a_latent_prior_shares_one_autoencoder_and_a_twin_keeps_its_latent_space(
        latent_prior: Path, hopper_pack: Path, pack: Path, prior_dir: Path, tmp_path: Path) -> None:
    """A latent prior trains one autoencoder on both people first, then its teacher in that latent space; a twin
    started from it keeps the prior's encoder and latent statistics and tunes only the decoder, and a teacher
    can start from the prior only over an autoencoder made that way."""
    from model.autoencoder import train_autoencoder
    from model.train import train

    prior = latent_prior
    card = json.loads((prior / CARD_FILE).read_text())
    shared = card["autoencoder"]
    assert shared["steps"] == 6 and shared["checkpoint_sha256"] == sha256_file(prior / "autoencoder.pt")
    assert set(shared["holdout_psnr"]) == {hopper_pack.name, pack.resolve().name}
    assert shared["standardised_on_frames"] > 0 and math.isfinite(shared["final_loss"])
    prior_ae = load_checkpoint(prior, "autoencoder").state_dict
    teacher = load_checkpoint(prior).state_dict
    for key, value in prior_ae.items():  # the teacher learnt over exactly this autoencoder
        torch.testing.assert_close(teacher[f"autoencoder.{key}"], value, rtol=0, atol=0)
    assert not torch.equal(prior_ae["latent_std"], torch.ones_like(prior_ae["latent_std"]))  # standardised

    run = tmp_path / "run"
    made = run_cli("train-ae", str(pack), "--config", "tiny-latent", "--from", str(prior), "--out", str(run),
                   "--steps", "5", "--batch-size", "4", "-q")
    assert json.loads(made.stdout.strip().splitlines()[-1])["steps"] == 5
    tuned = load_checkpoint(run, "autoencoder")
    for key, value in prior_ae.items():
        if key.startswith("encoder.") or key.startswith("latent_"):
            torch.testing.assert_close(tuned.state_dict[key], value, rtol=0, atol=0)
    assert any(not torch.equal(tuned.state_dict[key], value) for key, value in prior_ae.items()
               if key.startswith("decoder."))
    assert tuned.extra["init_from"] == {"path": str(prior.resolve()),
                                        "autoencoder_sha256": sha256_file(prior / "autoencoder.pt")}
    latent = LATENT
    result = train(pack, run, latent, TrainConfig(steps=2, batch_size=4, threads=2), progress=False, init_from=prior)
    assert result.steps == 2 and load_checkpoint(run).extra["init_from"]["path"] == str(prior.resolve())

    own = tmp_path / "own"
    train_autoencoder(pack, own, latent, LATENT_CONFIG, progress=False)
    with pytest.raises(InputError, match=r"autoencoder was not made from prior .* train-ae PACK --from"):
        train(pack, own, latent, TrainConfig(steps=2, batch_size=4, threads=2), progress=False, init_from=prior)
    pixel = run_cli("train-ae", str(pack), "--config", "tiny-latent", "--from", str(prior_dir), "--out",
                    str(tmp_path / "x"), check=False)
    assert pixel.returncode == 2 and "has no shared autoencoder (it is a tiny prior)" in pixel.stderr


def test_create_starts_the_teacher_from_a_prior_and_says_so(prior_dir: Path, new_person_clip: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "twins" / "hopper"
    made = run_cli("create", str(new_person_clip), "--name", "hopper", "--size", "tiny", "--budget", "45s", "--out",
                   str(out), "--prior", str(prior_dir), "--json")
    events = [json.loads(line) for line in made.stdout.splitlines() if line.startswith("{")]
    said = [event["text"] for event in events if event["type"] == "message"]
    assert f"teacher: from the prior {prior_dir}" in said
    state = json.loads((out / "create.json").read_text())
    assert state["prior"]["path"] == str(prior_dir.resolve())
    assert state["stages"]["teacher"]["init_from"] == str(prior_dir.resolve())
    assert load_checkpoint(out / "run").extra["init_from"]["card_sha256"] == sha256_file(prior_dir / CARD_FILE)


def test_create_starts_a_latent_twin_from_a_latent_prior_over_its_autoencoder(latent_prior: Path,
                                                                             new_person_clip: Path,
                                                                             tmp_path: Path) -> None:
    out = tmp_path / "twins" / "hopper"
    # The least budget a tiny-latent twin takes here is about 70 s (enrolment, eval, export and the least steps).
    made = run_cli("create", str(new_person_clip), "--name", "hopper", "--size", "tiny-latent", "--budget", "100s",
                   "--out", str(out), "--prior", str(latent_prior), "--json")
    said = [event["text"] for line in made.stdout.splitlines() if line.startswith("{")
            for event in [json.loads(line)] if event["type"] == "message"]
    assert ("autoencoder: the prior's encoder and latent space, its decoder tuned to this person "
            f"({latent_prior.resolve()})") in said
    state = json.loads((out / "create.json").read_text())
    assert state["stages"]["autoencoder"]["init_from"] == str(latent_prior.resolve())
    assert state["stages"]["teacher"]["init_from"] == str(latent_prior.resolve())
    shared = load_checkpoint(latent_prior, "autoencoder").state_dict
    own = load_checkpoint(out / "run", "autoencoder").state_dict
    torch.testing.assert_close(own["encoder.0.weight"], shared["encoder.0.weight"], rtol=0, atol=0)


def test_create_without_a_shipped_prior_starts_from_scratch_and_refuses_a_wrong_prior(
        prior_dir: Path, new_person_clip: Path, tmp_path: Path) -> None:
    both = run_cli("create", str(new_person_clip), "--name", "x", "--size", "tiny", "--out", str(tmp_path / "x"),
                   "--prior", str(prior_dir), "--from-scratch", check=False)
    assert both.returncode == 2 and "--from-scratch were both given; choose one" in both.stderr
    other = run_cli("create", str(new_person_clip), "--name", "y", "--size", "demo", "--out", str(tmp_path / "y"),
                    "--prior", str(prior_dir), check=False)
    assert other.returncode == 2 and "is a tiny prior, and this is a demo model" in other.stderr
    assert not (tmp_path / "x" / "create.json").exists() and not (tmp_path / "y" / "create.json").exists()
    if shipped_prior("tiny") is None:  # none ships today: the default is from scratch, and create says so
        from model.prior_card import choose_prior

        assert choose_prior("tiny", prior=None, from_scratch=False) == (
            None, "from scratch: no prior ships for size tiny (assets/prior/tiny/)")
