"""One session's live-commerce production: the show it runs (``Production`` as the run of show's player), its
chat inbox, the elements each segment puts on screen, and the one way text reaches the twin's voice from here.

Running a show: the player says a segment's lines one after another (``TwinSession.say``), each once the twin is
silent — so an answer queued meanwhile plays between two lines — with ``gap_s`` between them; entering a segment
shows its elements (and hides the others) from the next frame composed. ``hold`` lets the current line finish and
waits; ``skip`` and ``back`` cut the line and move; an interrupt that the player did not make (the producer's
Stop) holds the show. Each line's duration is estimated up front by synthesising it with the session's TTS, so
the dashboard shows the show's clock against its plan.

Answering viewers (``answer``): a FAQ answer, the producer's words, or an agent webhook's answer (text said in the
twin's voice, or audio in the agent's own), queued after
what is being said ("next") or cutting in ("now": the show's line that was cut is said again afterwards). Only
two callers exist: the operator API (the producer's click) and ``_auto_answer``, which acts only while the show's
``auto_answer`` switch is on. A viewer's question is read aloud only when asked for, and only after
``moderation.speakable`` passed it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from avatar.speech import Speech, check_text
from stream.chat import ChatDesk, ChatMessage, ask_agent, match_faq
from stream.moderation import speakable
from stream.overlay_art import CardContent
from stream.overlays import KINDS, CountdownBadge, Element, Ticker, card_element, lower_third_element
from stream.products import Catalogue, Product
from stream.session import Spawn, TwinSession
from stream.show import Segment, Show
from stream.tts import TTS_FAILURES
from twincast.errors import InputError, NotFoundError, TwincastError, UnprocessableError

log = logging.getLogger(__name__)
STATES = ("idle", "ready", "running", "holding", "finished")
AUTO_ANSWER_SCORE = 0.5  # a FAQ match at least this good is answered by the auto-answerer
AUTO_ANSWER_EVERY_S = 20.0  # at most one automatic answer this often: a busy chat does not take over the show
MAX_AGENT_ANSWER_CHARS = 600
Note = Callable[[str, str], None]  # (message, level) into the event log


def next_frame(session: TwinSession) -> int:
    """The first frame not yet composed: an element shown now appears from there (see ``overlays``)."""
    return session.clock.frame_at() - session.lookahead + 1


class Production:
    """A session's run of show, chat inbox and answers (see the module docstring)."""

    def __init__(self, session: TwinSession, spawn: Spawn, note: Note) -> None:
        self.session = session
        self.overlays = session.compositor.overlays
        self.chat = ChatDesk(extra_words=lambda: self.show.blocked_words if self.show else ())
        self.show: Show | None = None
        self.catalogue: Catalogue | None = None
        self.state = "idle"
        self.position = (0, 0)  # (segment, line) said now or next
        self.estimates: dict[tuple[int, int], float] = {}  # seconds of speech per line, from the TTS
        self.spoken: set[tuple[int, int]] = set()
        self.auto_answer = False
        self.started_at: float | None = None
        self.segment_started_at: float | None = None
        self.error: str | None = None
        self.version = 0
        self._spawn = spawn
        self._note = note
        self._entered: int | None = None  # the segment whose elements are on screen
        self._poke = asyncio.Event()  # set on silence and on every control action
        self._epoch = 0  # bumped by each control action that moves the position or stops the player
        self._answering = 0  # answers being synthesised: the next line waits for them
        self._own_interrupt = False
        self._last_auto = -AUTO_ANSWER_EVERY_S
        self._player: asyncio.Task[Any] | None = None
        self._estimator: asyncio.Task[Any] | None = None
        self._listeners: list[Callable[[], None]] = []
        session.on("speaking", self._on_speaking)
        session.on("interrupted", self._on_interrupted)
        self.chat.on_change(self._on_chat)

    # --- announcing -------------------------------------------------------------------------------------------

    def on_change(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` after every change of the run of show. Returns what stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _changed(self) -> None:
        self.version += 1
        self._poke.set()
        for listener in self._listeners:
            listener()

    def _on_speaking(self, speaking: bool) -> None:
        if not speaking:
            self._poke.set()

    def _on_interrupted(self, first_silent_frame: int, dropped_frames: int) -> None:
        if self._own_interrupt or self.state != "running":
            return
        self.state = "holding"  # the producer stopped the twin: the show waits for them
        self._epoch += 1
        self._note("show held: the twin was interrupted; resume when ready", "warning")
        self._changed()

    # --- loading and controls -------------------------------------------------------------------------------

    async def load(self, show: Show, catalogue: Catalogue) -> None:
        """Make ``show`` the session's show (stopping one that runs), checking its products exist, and estimate
        its lines' durations in the background.

        Raises:
            UnprocessableError: a segment names a product the catalogue does not have.
        """
        for number, segment in enumerate(show.segments):
            if segment.product is not None:
                try:
                    catalogue.get(segment.product)
                except NotFoundError as exc:
                    raise UnprocessableError(f"segment {number + 1} ({segment.title!r}) names product "
                                             f"{segment.product!r}, which is not in the catalogue") from exc
        await self.stop()
        self.show, self.catalogue = show, catalogue
        self.auto_answer = show.auto_answer
        self.state, self.position, self.spoken, self.estimates, self.error = "ready", (0, 0), set(), {}, None
        self.started_at = self.segment_started_at = None
        if self._estimator is not None:
            self._estimator.cancel()
        self._estimator = self._spawn(self._estimate(show), f"show-estimate-{self.session.session_id}")
        self._note(f"show loaded: {show.name} ({len(show.segments)} segments)", "info")
        self._changed()

    def _require_show(self) -> Show:
        if self.show is None:
            raise InputError("no show is loaded in this session; load one first (POST /api/show/load)")
        return self.show

    def start(self, segment: int = 0) -> None:
        """Run the show from the start of ``segment``.

        Raises:
            InputError: no show loaded, or no such segment.
        """
        show = self._require_show()
        if not 0 <= segment < len(show.segments):
            raise InputError(f"segment {segment} is outside 0..{len(show.segments) - 1}")
        self._move((segment, 0), cut=True)
        self.started_at = time.time() if self.state in ("ready", "finished") or self.started_at is None \
            else self.started_at
        self.state = "running"
        self._play()
        self._changed()

    def hold(self) -> None:
        """Finish the current line, then wait."""
        self._require_show()
        if self.state == "running":
            self.state = "holding"
            self._changed()

    def resume(self) -> None:
        """Go on from where the show was held."""
        self._require_show()
        if self.state in ("holding", "ready"):
            if self.started_at is None:
                self.started_at = time.time()
            self.state = "running"
            self._play()
            self._changed()

    def skip(self) -> None:
        """Cut the current line and go to the next (the next segment after a segment's last line)."""
        show = self._require_show()
        segment, line = self.position
        lines = len(show.segments[segment].lines) if segment < len(show.segments) else 0
        self._move((segment, line + 1) if line + 1 < lines else (segment + 1, 0), cut=True)

    def back(self) -> None:
        """Cut the current line and say the one before it again (the previous segment's last, at a start)."""
        show = self._require_show()
        segment, line = self.position
        if line > 0:
            self._move((segment, line - 1), cut=True)
        elif segment > 0:
            self._move((segment - 1, max(0, len(show.segments[segment - 1].lines) - 1)), cut=True)
        else:
            self._move((0, 0), cut=True)

    def next_segment(self) -> None:
        """Cut the line and go to the next segment."""
        self._require_show()
        self._move((self.position[0] + 1, 0), cut=True)

    def previous_segment(self) -> None:
        """Cut the line and go to the start of the previous segment (or of this one, at the first)."""
        self._require_show()
        self._move((max(0, self.position[0] - 1), 0), cut=True)

    async def stop(self) -> None:
        """End the show: cut the twin off, clear the screen, go back to the start."""
        was_playing = self.state in ("running", "holding")
        self._epoch += 1
        if self._player is not None:
            self._player.cancel()
            await asyncio.gather(self._player, return_exceptions=True)
            self._player = None
        if was_playing:
            self._interrupt()
        at = next_frame(self.session)
        for kind in KINDS:
            self.overlays.hide(kind, at)
        self._entered = None
        if self.show is not None:
            self.state, self.position = "ready", (0, 0)
        self._changed()

    def _move(self, position: tuple[int, int], *, cut: bool) -> None:
        """Go to ``position``; with ``cut``, silence the line being said (the player says the new one)."""
        self._epoch += 1
        if cut and self.state == "running" and self.session.speaking:
            self._interrupt()
        self.position = position
        if self.show is not None and position[0] >= len(self.show.segments) and self.state == "running":
            self._finish()
        self._changed()

    def _interrupt(self) -> None:
        self._own_interrupt = True
        try:
            self.session.interrupt()
        finally:
            self._own_interrupt = False

    def _finish(self) -> None:
        self.state = "finished"
        self._note("show finished", "info")

    # --- the player -----------------------------------------------------------------------------------------

    def _play(self) -> None:
        if self._player is None or self._player.done():
            self._player = self._spawn(self._run(), f"show-{self.session.session_id}")

    async def _until_quiet(self, epoch: int) -> bool:
        """Wait until the twin is silent and no answer is being prepared; False when a control action came."""
        while self._epoch == epoch:
            self._poke.clear()
            if not self.session.speaking and not self._answering:
                return True
            await self._poke.wait()
        return False

    async def _run(self) -> None:
        show = self._require_show()
        while self.state == "running":
            epoch = self._epoch
            segment_index, line_index = self.position
            if segment_index >= len(show.segments):
                self._finish()
                self._changed()
                return
            if not await self._until_quiet(epoch):
                continue
            if self._entered != segment_index:
                await self._enter(segment_index)
                if self._epoch != epoch:
                    continue
            segment = show.segments[segment_index]
            if line_index >= len(segment.lines):
                await self._hold_for(segment, epoch)
                if self._epoch == epoch:
                    self._move((segment_index + 1, 0), cut=False)
                continue
            generation = self.session.generation
            try:
                await self.session.say(segment.lines[line_index])
            except TTS_FAILURES as exc:
                self.state, self.error = "holding", f"line {line_index + 1} of {segment.title!r}: {exc}"
                self._note(f"show held: text to speech failed ({exc})", "error")
                self._changed()
                return
            if not await self._until_quiet(epoch) or self.session.generation != generation:
                continue  # moved, or the line was cut by an answer: said again once the answer is done
            self.spoken.add((segment_index, line_index))
            self.position = (segment_index, line_index + 1)  # said: a hold or a resume goes on from the next
            self._epoch += 1
            self._changed()
            await self._pause(show.gap_s, self._epoch)

    async def _pause(self, seconds: float, epoch: int) -> bool:
        """Wait ``seconds`` unless a control action comes first; True when the pause ran out."""
        deadline = time.monotonic() + seconds
        while self._epoch == epoch and (left := deadline - time.monotonic()) > 0:
            self._poke.clear()
            try:
                await asyncio.wait_for(self._poke.wait(), timeout=left)
            except TimeoutError:
                break
        return self._epoch == epoch

    async def _hold_for(self, segment: Segment, epoch: int) -> None:
        """A segment without lines stays on screen for its ``target_s`` (the producer talks, or shows a product)."""
        if not segment.lines and segment.target_s and self.segment_started_at is not None:
            await self._pause(max(0.0, self.segment_started_at + segment.target_s - time.time()), epoch)

    async def _enter(self, segment_index: int) -> None:
        """Put a segment's elements on screen (drawn off the loop) and take the others away."""
        show = self._require_show()
        segment = show.segments[segment_index]
        at = next_frame(self.session)  # drawing takes a frame or two: the fade-in's first steps may be passed
        elements = await asyncio.get_running_loop().run_in_executor(None, self._draw, show, segment, at)
        for kind in KINDS:
            if kind not in {element.kind for element in elements}:
                self.overlays.hide(kind, at)
        for element in elements:
            self.overlays.show(element, at)
        self._entered = segment_index
        self.segment_started_at = time.time()
        self._note(f"segment {segment_index + 1}/{len(show.segments)}: {segment.title}", "info")

    def _draw(self, show: Show, segment: Segment, at_frame: int) -> list[Element]:
        """The elements a segment shows from ``at_frame`` (on an executor thread: Pillow draws them)."""
        fps = self.session.clock.fps
        layout = self.overlays.layout
        product = self._product(segment.product)
        elements: list[Element] = []
        if "card" in segment.elements and product is not None:
            content = card_content(product, self.catalogue)
            elements.append(card_element(layout, content, {"product": product.product_id}))
        if "lower_third" in segment.elements and show.host_name:
            elements.append(lower_third_element(layout, show.host_name, show.host_title))
        if "badge" in segment.elements:
            text = segment.offer.text if segment.offer else (product.price if product else "")
            detail = segment.offer.detail if segment.offer else ""
            ends_in_s = segment.offer.ends_in_s if segment.offer else None
            if text:
                ends_at = None if ends_in_s is None else at_frame + round(ends_in_s * fps)
                elements.append(CountdownBadge(layout, text, detail, ends_at, fps))
        if "ticker" in segment.elements and segment.ticker:
            elements.append(Ticker(layout, segment.ticker, at_frame, fps))
        return elements

    def _product(self, product_id: str | None) -> Product | None:
        if product_id is None or self.catalogue is None:
            return None
        try:
            return self.catalogue.get(product_id)
        except NotFoundError:
            self._note(f"product {product_id!r} was deleted: its card is not shown", "warning")
            return None

    async def _estimate(self, show: Show) -> None:
        """Synthesise every line once to know how long it takes (one at a time, in the background)."""
        for segment_index, segment in enumerate(show.segments):
            for line_index, line in enumerate(segment.lines):
                try:
                    speech = await self.session.tts.synthesize(line)
                except TTS_FAILURES as exc:
                    self.error = f"timing estimates stopped: {exc}"
                    self._changed()
                    return
                self.estimates[(segment_index, line_index)] = speech.samples.size / speech.sample_rate_hz
            self._changed()

    # --- answering viewers ----------------------------------------------------------------------------------

    async def answer(self, message_id: int, *, source: str, text: str | None = None, product_id: str | None = None,
                     faq_index: int | None = None, when: str = "next", read_question: bool = False,
                     by: str = "producer") -> dict[str, Any]:
        """Answer a viewer's message aloud: with ``text`` (the producer's words), a FAQ entry, or the show's
        agent; after what is being said (``next``) or cutting in (``now``). See the module docstring for who
        may call this.

        Raises:
            NotFoundError: no such message, product or FAQ entry.
            InputError: a missing text, or an agent asked for without one configured.
            UnprocessableError: what would be read aloud fails ``moderation.speakable``.
            ToolError, DependencyError: the agent or the TTS failed.
        """
        message = self.chat.get(message_id)
        self._answering += 1
        try:
            reply = await self._reply(message, source, text, product_id, faq_index)
            question = ""
            if read_question:
                extra = self.show.blocked_words if self.show else ()
                asked = speakable(message.text, "the question", extra)
                question = f"{speakable(message.user, 'the user name', extra)} asks: {asked}"
            if isinstance(reply, Speech):  # the agent's own voice: the question (if read) in the twin's, then it
                asked_speech = await self.session.tts.synthesize(question) if question else None
                if when == "now":
                    self._interrupt_for_answer()
                frames = sum([await self.session.queue_speech(part) for part in (asked_speech, reply) if part])
                result = {"queued_s": round(frames / self.session.clock.fps, 3), "generation": self.session.generation}
                reply = f"(the agent's spoken answer, {reply.duration_s:.1f} s)"
            else:
                if when == "now":
                    self._interrupt_for_answer()
                result = await self.session.say(f"{question} {reply}" if question else reply)
        finally:
            self._answering -= 1
            self._poke.set()
        self.chat.mark(message, "answered", reply, by if by == "auto" else source if source != "text" else by)
        return {**result, "answer": reply, "message": message.to_dict()}

    async def _reply(self, message: ChatMessage, source: str, text: str | None, product_id: str | None,
                     faq_index: int | None) -> str | Speech:
        if source == "faq":
            if product_id is None or faq_index is None or self.catalogue is None:
                raise InputError('a FAQ answer needs "product" and "faq_index"')
            product = self.catalogue.get(product_id)
            if not 0 <= faq_index < len(product.faq):
                raise NotFoundError(f"product {product_id!r} has no FAQ entry {faq_index} (it has {len(product.faq)})")
            return product.faq[faq_index].answer
        if source == "agent":
            if self.show is None or not self.show.agent_url:
                raise InputError("this session's show has no agent webhook (agent_url)")
            answer = await ask_agent(self.show.agent_url, message, self._context(),
                                     max_audio_s=self.session.audio_queue.max_frames / self.session.clock.fps)
            if isinstance(answer, Speech):  # the agent spoke for itself: its words cannot be screened here
                return answer
            return speakable(answer, "the agent's answer", self.show.blocked_words, MAX_AGENT_ANSWER_CHARS)
        if not text:
            raise InputError('an answer in your own words needs "text"')
        return check_text(text)

    def _interrupt_for_answer(self) -> None:
        """Cut the twin off for an answer without holding the show: the cut line (still at ``position``, not yet
        marked spoken) is said again after it."""
        self._interrupt()

    def _context(self) -> dict[str, Any]:
        """What an agent is told besides the question: the show, the segment and its product."""
        show = self.show
        segment = show.segments[self.position[0]] if show and self.position[0] < len(show.segments) else None
        product = self._product(segment.product if segment else None)
        return {"show": show.name if show else None, "segment": segment.title if segment else None,
                "product": product.to_dict() if product else None}

    def suggestions(self, message_id: int) -> list[dict[str, Any]]:
        """FAQ entries that may answer a message, best first."""
        message = self.chat.get(message_id)
        if self.catalogue is None:
            return []
        current = self._current_product()
        return [match.to_dict() for match in match_faq(message.text, self.catalogue.list(), current=current)]

    def _current_product(self) -> str | None:
        show = self.show
        if show is None or self.position[0] >= len(show.segments):
            return None
        return show.segments[self.position[0]].product

    def set_auto_answer(self, enabled: bool) -> None:
        """Turn the show's auto-answer switch on or off.

        Raises:
            InputError: no show is loaded (the switch belongs to a show).
        """
        self._require_show()
        self.auto_answer = enabled
        self._note(f"auto-answer {'on' if enabled else 'off'}", "warning" if enabled else "info")
        self._changed()

    def _on_chat(self, message: ChatMessage) -> None:
        if message.state == "new" and message.answered_at is None and self.auto_answer and self.show is not None:
            self._spawn(self._auto_answer(message), f"auto-answer-{self.session.session_id}")

    async def _auto_answer(self, message: ChatMessage) -> None:
        """Answer a new message without a click — only while the show's switch is on, at most one every
        ``AUTO_ANSWER_EVERY_S``, with the show's agent or a FAQ entry matched well enough."""
        if not self.auto_answer or self.show is None or time.monotonic() - self._last_auto < AUTO_ANSWER_EVERY_S:
            return
        if self.show.read_questions and message.flags:
            return  # it would be read aloud, and cannot be: the producer decides
        self._last_auto = time.monotonic()
        try:
            if self.show.agent_url:
                await self.answer(message.message_id, source="agent", read_question=self.show.read_questions,
                                  by="auto")
                return
            matches = self.suggestions(message.message_id)
            if matches and matches[0]["score"] >= AUTO_ANSWER_SCORE:
                await self.answer(message.message_id, source="faq", product_id=matches[0]["product_id"],
                                  faq_index=matches[0]["index"], read_question=self.show.read_questions, by="auto")
            else:
                self._last_auto = -AUTO_ANSWER_EVERY_S  # nothing said: the next question may be answered
        except TwincastError as exc:
            self._note(f"auto-answer to message {message.message_id} failed: {exc}", "warning")

    # --- reporting and closing ------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The run of show as the dashboard shows it: state, position, lines with their estimates, the clock."""
        show = self.show
        segments = []
        plan_total = plan_before = 0.0
        for index, segment in enumerate(show.segments if show else ()):
            estimates = [self.estimates.get((index, line)) for line in range(len(segment.lines))]
            spoken_s = sum((e or 0.0) + show.gap_s for e in estimates) if show else 0.0
            planned = segment.target_s or spoken_s
            if index < self.position[0]:
                plan_before += planned
            elif index == self.position[0] and show is not None:
                done = sum((estimates[line] or 0.0) + show.gap_s for line in range(min(self.position[1],
                                                                                         len(estimates))))
                plan_before += min(done, planned)
            plan_total += planned
            segments.append({"estimates_s": [None if e is None else round(e, 2) for e in estimates],
                             "spoken": [(index, line) in self.spoken for line in range(len(segment.lines))],
                             "planned_s": round(planned, 1), "estimated_s": round(spoken_s, 1)})
        elapsed = time.time() - self.started_at if self.started_at else 0.0
        return {
            "state": self.state, "show": show.to_dict() if show else None,
            "position": {"segment": self.position[0], "line": self.position[1]}, "segments": segments,
            "clock": {"elapsed_s": round(elapsed, 1), "planned_s": round(plan_total, 1),
                      "planned_at_position_s": round(plan_before, 1),
                      "behind_s": round(elapsed - plan_before, 1) if self.started_at else 0.0,
                      "segment_elapsed_s": round(time.time() - self.segment_started_at, 1)
                      if self.segment_started_at and self.state in ("running", "holding") else 0.0},
            "auto_answer": self.auto_answer, "error": self.error, "version": self.version,
            "estimated_lines": len(self.estimates),
        }

    async def close(self) -> None:
        """Stop the player and the estimator."""
        for task in (self._player, self._estimator):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(task for task in (self._player, self._estimator) if task is not None),
                             return_exceptions=True)


def card_content(product: Product, catalogue: Catalogue | None) -> CardContent:
    """A product as its card shows it (blocking: reads the picture)."""
    return CardContent(product.name, product.price, product.was_price, product.bullets, product.footer,
                       catalogue.picture(product.product_id) if catalogue is not None else None)
