"""Viewer questions: comments from any platform bridge come in (``POST /api/chat``, the ``/api/chat/ingest``
WebSocket), wait in a session's inbox, and are answered by the producer — with a product's FAQ answer, in their
own words, or by a show's agent webhook.

Nothing a viewer wrote reaches the twin's voice on its own: ``ChatDesk.ingest`` only stores and screens a
message. What is spoken goes through ``Production.answer`` (``stream.production``), which is called by the
producer's click (an operator request) or, when the show's ``auto_answer`` switch is on, by the auto-answerer;
and what a viewer wrote that is read aloud (their question) or an agent wrote from it is screened by
``moderation.speakable`` first.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

from avatar.speech import Speech, clean_text
from stream.audio_files import decode_audio_file, decode_pcm
from stream.moderation import flags
from stream.products import Product
from twincast.errors import InputError, NotFoundError, ToolError, UnprocessableError

MAX_MESSAGES = 500  # per session; overflow rule: the oldest message is forgotten
MAX_CHAT_CHARS = 2000
MAX_USER_CHARS = 64
AGENT_TIMEOUT_S = 15.0
MAX_AGENT_REPLY_BYTES = 16 * 1024
MAX_AGENT_AUDIO_BYTES = 32 * 1024**2  # an agent's spoken answer: about 5 min of 48 kHz mono PCM
CHAT_MESSAGE: dict[str, Any] = {"type": "object", "required": ["user", "text"], "additionalProperties": False,
                                "properties": {
    "user": {"type": "string", "minLength": 1, "maxLength": MAX_USER_CHARS},
    "text": {"type": "string", "minLength": 1, "maxLength": MAX_CHAT_CHARS},
    "time": {"type": ["number", "null"], "minimum": 0, "maximum": 1e11,
             "description": "when it was written, seconds since the epoch (default: when it arrived)"},
    "platform": {"type": "string", "maxLength": 32, "description": "where it was written: tiktok, youtube, …"},
    "session": {"type": ["string", "null"]},
}}
STOP_WORDS = frozenset(
    "a an and are as at be can could do does for from have has how i if in is it its me my of on or please so "
    "that the this to was what when where which who will with would you your yours there their they them".split())


@dataclass
class ChatMessage:
    """A viewer's comment as it came (cleaned of control characters), where and when, and what became of it."""

    message_id: int
    user: str
    text: str
    platform: str
    sent_at: float
    received_at: float
    flags: list[str]  # why it could not be read aloud as it is (``moderation.flags``)
    state: str = "new"  # new, answered, dismissed
    answer: str | None = None
    answered_by: str | None = None  # producer, faq, agent, auto
    answered_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        data = asdict(self)
        data["id"] = data.pop("message_id")
        return data


@dataclass(frozen=True)
class FaqMatch:
    """A product's FAQ entry that may answer a question, with how well it matched (0..1)."""

    product_id: str
    index: int
    question: str
    answer: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def words(text: str) -> set[str]:
    """Content words of ``text``: lower case, no stop words, a plural's ``s`` dropped."""
    found = set()
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        if word in STOP_WORDS or len(word) < 2:
            continue
        found.add(word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word)
    return found


def match_faq(question: str, products: Iterable[Product], *, current: str | None = None,
              limit: int = 3) -> list[FaqMatch]:
    """The FAQ entries that best answer ``question``, best first (score > 0 only).

    Score: the share of an entry's keywords found in the question (each keyword counts twice), with the share of
    the entry's own question words found; an entry of the product on screen (``current``) or of a product the
    question names gets a bonus. A plain word-overlap scorer: a local text-similarity model would need weights
    downloaded at install (none ships in a package), and a 30-entry FAQ is matched well by its keywords.
    """
    asked = words(question)
    if not asked:
        return []
    matches = []
    for product in products:
        named = bool(words(product.name) & asked)
        for index, entry in enumerate(product.faq):
            keywords = {word for keyword in entry.keywords for word in words(keyword)}
            own = words(entry.question)
            hits = 2 * len(keywords & asked) + len(own & asked)
            total = 2 * len(keywords) + len(own)
            if not hits or not total:
                continue
            score = hits / total
            if product.product_id == current or named:
                score += 0.25
            matches.append(FaqMatch(product.product_id, index, entry.question, entry.answer, round(min(score, 1.0), 3)))
    return sorted(matches, key=lambda match: -match.score)[:limit]


class ChatDesk:
    """A session's inbox of viewer messages (bounded: see ``MAX_MESSAGES``); announces each new one and each
    change to ``listeners`` (the dashboard's feed)."""

    def __init__(self, extra_words: Callable[[], Iterable[str]] = tuple) -> None:
        self.messages: deque[ChatMessage] = deque(maxlen=MAX_MESSAGES)
        self.received = 0
        self.version = 0
        self._ids = itertools.count(1)
        self._extra_words = extra_words
        self._listeners: list[Callable[[ChatMessage], None]] = []

    def on_change(self, listener: Callable[[ChatMessage], None]) -> Callable[[], None]:
        """Call ``listener`` with each message that arrives or changes. Returns what stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _changed(self, message: ChatMessage) -> None:
        self.version += 1
        for listener in self._listeners:
            listener(message)

    def ingest(self, body: dict[str, Any]) -> ChatMessage:
        """Store a message checked against ``CHAT_MESSAGE`` (the caller checks the schema): nothing is spoken.

        Raises:
            InputError: a user name or text with nothing left once control characters are removed.
        """
        user = clean_text(body["user"]).strip()
        text = clean_text(body["text"]).strip()
        if not user or not text:
            raise InputError("a chat message needs a user and a text with something printable in each")
        now = time.time()
        sent = body.get("time")
        message = ChatMessage(next(self._ids), user, text, str(body.get("platform") or "unknown"),
                              float(sent) if sent is not None else now, now,
                              flags(text, self._extra_words()) + [f"user name: {flag}" for flag in
                                                                 flags(user, self._extra_words())])
        self.messages.append(message)
        self.received += 1
        self._changed(message)
        return message

    def get(self, message_id: int) -> ChatMessage:
        """A message by id.

        Raises:
            NotFoundError: no such message (or it was forgotten, ``MAX_MESSAGES`` ago).
        """
        for message in self.messages:
            if message.message_id == message_id:
                return message
        raise NotFoundError(f"no chat message {message_id} (the inbox keeps the last {MAX_MESSAGES})")

    def mark(self, message: ChatMessage, state: str, answer: str | None = None, by: str | None = None) -> None:
        """Record what became of a message."""
        message.state = state
        message.answer = answer
        message.answered_by = by
        message.answered_at = time.time() if state == "answered" else None
        self._changed(message)

    def listing(self, *, text: str = "", state: str = "", after: int = 0, limit: int = 200) -> list[ChatMessage]:
        """Messages newest first, filtered by a word in the user or text, by state, and by id."""
        needle = text.lower()
        found = [m for m in reversed(self.messages) if m.message_id > after and (not state or m.state == state)
                 and (not needle or needle in m.text.lower() or needle in m.user.lower())]
        return found[:limit]


async def ask_agent(url: str, message: ChatMessage, context: dict[str, Any], *, max_audio_s: float,
                    timeout_s: float = AGENT_TIMEOUT_S) -> str | Speech:
    """POST a question to a show's agent webhook and return its answer: text to speak, or speech it made itself.

    The webhook gets ``{"question", "user", "platform", "message_id", "show", "segment", "product"}`` as JSON and
    answers within ``timeout_s`` with ``{"text": "…"}`` or a ``text/plain`` body (up to ``MAX_AGENT_REPLY_BYTES``),
    or with its own voice: raw 16-bit PCM (``audio/pcm;rate=24000[;channels=1]``, little-endian, or RFC 2586's
    big-endian ``audio/L16;rate=…``) or an audio file (``audio/wav``, ``audio/mpeg``, ``audio/ogg``…), which may
    be streamed (chunked); the whole answer is read (up to ``MAX_AGENT_AUDIO_BYTES`` and ``max_audio_s``), then
    queued.

    Raises:
        ToolError: the webhook failed, timed out, answered an error status, too much, or no text (502).
        UnprocessableError: its answer has nothing to say, or audio that does not decode.
        LimitError: its audio is longer than ``max_audio_s``.
    """
    payload = {"question": message.text, "user": message.user, "platform": message.platform,
               "message_id": message.message_id, **context}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as client, \
                client.post(url, json=payload) as response:
            kind = response.content_type.lower()
            limit = MAX_AGENT_AUDIO_BYTES if kind.startswith("audio/") else MAX_AGENT_REPLY_BYTES
            body = await _read_up_to(response.content, limit if response.status < 400 else 200)
            if response.status >= 400:
                raise ToolError(f"the agent webhook answered {response.status}: {body[:200]!r}")
            if len(body) > limit:
                raise ToolError(f"the agent webhook's answer is over {limit} bytes")
            parameters = _type_parameters(response.headers.get("Content-Type", ""))
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ToolError(f"the agent webhook {url} did not answer: {type(exc).__name__}: {exc}") from exc
    if kind.startswith("audio/"):
        return await asyncio.get_running_loop().run_in_executor(None, _agent_audio, body, kind, parameters,
                                                                max_audio_s)
    return _agent_text(body, kind)


async def _read_up_to(content: aiohttp.StreamReader, limit: int) -> bytes:
    """A body to its end (streamed or not), or its first ``limit + 1`` bytes when it is longer."""
    parts: list[bytes] = []
    size = 0
    async for chunk in content.iter_chunked(1 << 16):
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(parts)[: limit + 1]


def _type_parameters(content_type: str) -> dict[str, str]:
    """``audio/pcm; rate=24000; channels=1`` → {"rate": "24000", "channels": "1"}."""
    pairs = (part.split("=", 1) for part in content_type.split(";")[1:] if "=" in part)
    return {key.strip().lower(): value.strip().strip('"') for key, value in pairs}


def _agent_audio(body: bytes, kind: str, parameters: dict[str, str], max_seconds: float) -> Speech:
    """The speech in an agent's audio answer: raw PCM (``audio/pcm``, ``audio/L16``) or an audio file."""
    what = "the agent webhook's audio answer"
    if kind in ("audio/pcm", "audio/l16"):
        try:
            rate, channels = int(parameters["rate"]), int(parameters.get("channels", "1"))
        except (KeyError, ValueError) as exc:
            raise ToolError(f"{what} is {kind} without a rate: expected e.g. {kind};rate=24000") from exc
        return decode_pcm(body, rate, channels, big_endian=kind == "audio/l16", max_seconds=max_seconds, what=what)
    return decode_audio_file(body, max_seconds)


def _agent_text(body: bytes, kind: str) -> str:
    """The answer text of an agent's reply (JSON ``{"text": …}`` or plain text)."""
    try:
        decoded = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ToolError("the agent webhook's answer is not UTF-8 text") from exc
    if kind == "application/json":
        try:
            parsed = json.loads(decoded)
        except ValueError as exc:
            raise ToolError(f"the agent webhook's JSON answer does not parse: {exc}") from exc
        if not isinstance(parsed, dict) or not isinstance(parsed.get("text"), str):
            raise ToolError('the agent webhook must answer {"text": "…"} or plain text')
        decoded = parsed["text"]
    text = clean_text(decoded).strip()
    if not text:
        raise UnprocessableError("the agent webhook answered nothing to say")
    return text


def check_webhook(url: str) -> str:
    """A show's agent webhook URL: ``http://`` or ``https://``, printable, at most 500 characters.

    Raises:
        InputError: anything else.
    """
    if len(url) > 500 or not re.fullmatch(r"https?://[\x21-\x7e]+", url):
        raise InputError(f"agent_url {url[:60]!r} must be an http:// or https:// URL of printable characters, at "
                         "most 500")
    return url


