"""What a viewer wrote, checked before the twin may read any of it aloud: its length and its language.

Viewer text (a chat question, a user name) and text an agent made from it are screened by ``speakable``: too
long, or holding a word of ``BLOCKED_WORDS`` (matched after folding case, accents, look-alike digits and
repeated letters, so ``Sh1iiit`` is caught), it is refused with a message naming why; the producer can still
answer in their own words. ``flags`` says the same for the dashboard, without refusing.

The list is short and English on purpose: a seller adds their own words with ``extra_words`` (per show).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from avatar.speech import clean_text
from twincast.errors import UnprocessableError

MAX_SPOKEN_VIEWER_CHARS = 200  # a question read aloud; longer ones are answered without reading them
BLOCKED_WORDS = frozenset({
    "arse", "arsehole", "ass", "asshole", "bastard", "bitch", "bollocks", "bullshit", "cock", "cunt", "damn",
    "dick", "dickhead", "douche", "fag", "faggot", "fuck", "fucker", "fucking", "motherfucker", "nigga", "nigger",
    "piss", "prick", "pussy", "retard", "shit", "shitty", "slut", "twat", "wank", "wanker", "whore",
})
_LOOK_ALIKES = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s",
                              "!": "i", "|": "i"})
_WORD = re.compile(r"[a-z]+")


def _folded_words(text: str) -> list[str]:
    """Words of ``text`` lower-cased, accents stripped, look-alike digits and symbols read as letters, and runs
    of one letter shortened to one (``fuuuck`` → ``fuck``) — each word also kept with runs of two."""
    plain = unicodedata.normalize("NFKD", text.lower()).encode("ascii", "ignore").decode()
    plain = re.sub(r"(?<=[a-z0-9@$!|])[.*_\-](?=[a-z0-9@$!|])", "", plain)  # f.u.c.k, s*h*i*t
    words = _WORD.findall(plain.translate(_LOOK_ALIKES))
    return [form for word in words for form in {re.sub(r"(.)\1+", r"\1", word), re.sub(r"(.)\1{2,}", r"\1\1", word)}]


def blocked_words(text: str, extra_words: Iterable[str] = ()) -> list[str]:
    """The words of ``text`` the twin will not say (``BLOCKED_WORDS`` and ``extra_words``), as found."""
    blocked = BLOCKED_WORDS | {word.lower() for word in extra_words}
    return sorted({word for word in _folded_words(text) if word in blocked})


def flags(text: str, extra_words: Iterable[str] = ()) -> list[str]:
    """Why ``text`` could not be read aloud as it is: ``blocked words``, ``too long``; empty when it could."""
    found = []
    if blocked_words(text, extra_words):
        found.append("blocked words")
    if len(clean_text(text).strip()) > MAX_SPOKEN_VIEWER_CHARS:
        found.append("too long")
    return found


def speakable(text: str, what: str, extra_words: Iterable[str] = (), max_chars: int = MAX_SPOKEN_VIEWER_CHARS
              ) -> str:
    """``text`` cleaned for speech, if the twin may say it.

    Raises:
        UnprocessableError: longer than ``max_chars``, or holding a blocked word (the message says which
            rule, and masks the word).
    """
    cleaned = clean_text(text).strip()
    if len(cleaned) > max_chars:
        raise UnprocessableError(f"{what} has {len(cleaned)} characters; at most {max_chars} are read aloud")
    found = blocked_words(cleaned, extra_words)
    if found:
        masked = ", ".join(word[0] + "*" * (len(word) - 1) for word in found)
        raise UnprocessableError(f"{what} holds words the twin will not say ({masked}); answer it in your own words")
    return cleaned
