import numpy as np
import pytest

from avatar.speech import Voice, parse_wav, split_sentences, synthesize
from twincast.errors import InputError, UnprocessableError


def test_espeak_speaks_text() -> None:
    speech = synthesize("Testing the twin.")
    assert speech.sample_rate_hz == 22050
    assert 0.5 < speech.duration_s < 3.0
    assert np.abs(speech.samples).max() > 0.1


def test_empty_text_is_refused_with_a_reason() -> None:
    with pytest.raises(UnprocessableError, match="text is empty"):
        synthesize("   ")


def test_bad_voice_is_named() -> None:
    with pytest.raises(InputError, match="voice name"):
        Voice(name="en; rm -rf /")


def test_sentences_split_on_punctuation() -> None:
    assert split_sentences("One. Two!  Three?") == ["One.", "Two!", "Three?"]


def test_parse_wav_rejects_non_wav() -> None:
    with pytest.raises(InputError, match="RIFF"):
        parse_wav(b"not audio at all")
