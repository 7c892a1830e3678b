"""The canvas, the on-screen elements, and what live commerce checks before it shows or says anything (unit tier:
the synthetic twin's assets, no server)."""

from __future__ import annotations

import io
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from stream.canvas import Background, Compositor, Placement, canvas_size
from stream.chat import match_faq
from stream.images import decode_image, i420_planes
from stream.moderation import blocked_words, flags, speakable
from stream.overlay_art import CardContent
from stream.overlays import FADE_FRAMES, CountdownBadge, Showing, Sprite, Ticker, card_element, countdown_text
from stream.products import FaqEntry, Product
from stream.show import parse_show
from tests.stream.tiny_twin import tiny_assets
from twincast.errors import InputError, LimitError, UnprocessableError

FACE = np.zeros((3, 64, 64), np.float32)


def planes(frame: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return i420_planes(frame, *size)


def test_canvas_sizes_are_read_and_bad_ones_refused_by_name() -> None:
    assert canvas_size("720x1280") == (720, 1280) and canvas_size("1280x720") == (1280, 720)
    assert canvas_size("") is None and canvas_size("pack") is None
    for bad, named in (("720*1280", "WIDTHxHEIGHT"), ("721x1280", "width 721"), ("720x99999", "height 99999"),
                       ("64x64", "width 64")):
        with pytest.raises(InputError, match=named):
            canvas_size(bad)


def test_the_twin_sits_at_the_top_of_a_portrait_canvas_over_its_background() -> None:
    assets = tiny_assets()
    compositor = Compositor(assets, 25, canvas=(720, 1280), background=Background.colour("#2040c0", (720, 1280)))
    layout = compositor.layout
    assert layout is not None and layout.box == (0, 0, 720, 720)  # as wide as the canvas, at its top
    frame = compositor.base_i420(0, 3)
    assert frame.shape == (1920, 720)
    luma, chroma_u, chroma_v = planes(frame, (720, 1280))
    solid = cv2.cvtColor(np.full((2, 2, 3), (0x20, 0x40, 0xC0), np.uint8), cv2.COLOR_RGB2YUV_I420)
    assert np.all(luma[800:] == solid[0, 0]) and np.all(chroma_u[400:] == solid[2, 0]) and np.all(chroma_v[400:] ==
                                                                                               solid[2, 1])
    expected = cv2.resize(cv2.cvtColor(assets.base_frames[3], cv2.COLOR_RGB2YUV_I420)[:96], (720, 720))
    assert np.abs(luma[:720].astype(np.int16) - expected).mean() < 2.0  # the base frame, scaled into its box
    compositor.place(Placement(0.25, 0.75, 0.5))  # moved and halved: now centred at (180, 960)
    moved = planes(compositor.base_i420(1, 3), (720, 1280))[0]
    assert np.all(moved[:600] == solid[0, 0]) and not np.all(moved[800:1100, 20:340] == solid[0, 0])
    landscape = Compositor(assets, 25, canvas=(1280, 720))
    assert landscape.layout is not None and landscape.layout.box == (280, 0, 720, 720)  # centred, full height


def test_a_twin_pushed_past_the_edge_is_cut_not_wrapped_or_refused() -> None:
    compositor = Compositor(tiny_assets(), 25, canvas=(720, 1280))
    compositor.place(Placement(1.4, -0.2, 2.0))
    frame = compositor.compose_i420(0, 0, FACE)  # most of it off the canvas
    assert frame.shape == (1920, 720)
    with pytest.raises(InputError, match="scale"):
        Placement(0.5, 0.5, 9.0)
    with pytest.raises(InputError, match="no canvas"):
        Compositor(tiny_assets(), 25).place(Placement(0.5, 0.5, 1.0))


def test_an_opaque_element_has_the_videos_own_colours_and_a_clear_one_changes_nothing() -> None:
    frame = np.full((96 * 3 // 2, 96), 77, np.uint8)
    untouched = frame.copy()
    Sprite.from_picture(Image.new("RGBA", (40, 40), (200, 40, 40, 0)), 10, 10).draw(frame, 96, 96, 1.0)
    assert np.array_equal(frame, untouched)
    Sprite.from_picture(Image.new("RGBA", (40, 40), (200, 40, 40, 255)), 10, 10).draw(frame, 96, 96, 1.0)
    solid = cv2.cvtColor(np.full((2, 2, 3), (200, 40, 40), np.uint8), cv2.COLOR_RGB2YUV_I420)
    luma, chroma_u, chroma_v = planes(frame, (96, 96))
    assert np.abs(luma[10:50, 10:50].astype(int) - int(solid[0, 0])).max() <= 1
    assert np.abs(chroma_u[5:25, 5:25].astype(int) - int(solid[2, 0])).max() <= 1
    assert np.abs(chroma_v[5:25, 5:25].astype(int) - int(solid[2, 1])).max() <= 1
    assert np.array_equal(luma[60:], untouched[60:96])


def test_elements_fade_in_and_out_by_frame_index_and_a_frame_composed_twice_is_the_same() -> None:
    assets = tiny_assets()
    compositor = Compositor(assets, 25, canvas=(720, 1280))
    layout = compositor.overlays.layout
    card = card_element(layout, CardContent("Rain jacket", "$59", "$89", ("Waterproof",), "Code RAIN20"), {})
    compositor.overlays.show(card, 10)
    compositor.overlays.hide("card", 40)
    showing = Showing(card, 10, 40)
    assert [showing.opacity(n) for n in (9, 10, 17, 39, 40, 47)] == [0.0, 1 / FADE_FRAMES, 1.0, 1.0,
                                                                    1 - 1 / FADE_FRAMES, 0.0]
    left, top, width, height = card.box()
    region = (slice(top, top + height), slice(left, left + width))
    luma = [planes(compositor.compose_i420(n, 0, FACE), (720, 1280))[0] for n in (5, 13, 25, 60)]
    change = [float(np.abs(frame[region].astype(int) - luma[0][region]).mean()) for frame in luma]
    assert change[0] == 0 and 0 < change[1] < change[2] and change[3] == 0  # absent, fading in, shown, gone
    assert np.array_equal(compositor.compose_i420(13, 0, FACE), compositor.compose_i420(13, 0, FACE))


def test_the_countdown_counts_down_and_the_ticker_scrolls() -> None:
    assert [countdown_text(s) for s in (299, 60, 3723, 0)] == ["ends in 04:59", "ends in 01:00", "ends in 1:02:03",
                                                              "offer ended"]
    layout = Compositor(tiny_assets(), 25, canvas=(720, 1280)).overlays.layout
    badge = CountdownBadge(layout, "-30%", "today", 100 + 300 * 25, 25)
    assert [badge.seconds_left(n) for n in (100, 101, 125, 100 + 300 * 25, 10**6)] == [300, 300, 299, 0, 0]
    assert badge.sprite(101) is badge.sprite(110)  # drawn once per shown second
    ticker = Ticker(layout, "Free shipping today", 50, 25)
    offsets = [ticker.offset_px(n) for n in range(50, 50 + 25 * 60)]
    assert offsets[0] == 0 and all(offset % 2 == 0 and 0 <= offset < ticker.period_px for offset in offsets)
    assert len(set(offsets)) > 100  # it moves (and wraps: a minute is longer than one period)
    assert ticker.sprite(80).planes[0].shape == (ticker.strip.size[1], 720)


def test_a_looping_video_background_is_held_decoded_and_a_long_one_refused_naming_how_long_fits(
        tmp_path: Path) -> None:
    path = tmp_path / "loop.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        for index in range(20):
            frame = np.full((180, 320, 3), index * 12, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    background = Background.load(str(path), (720, 1280))
    assert len(background.frames) == 20 and background.frames[0].shape == (1920, 720)
    assert background.frame(21, 25) is background.frames[1]  # looped
    with pytest.raises(InputError, match=r"longer than the 10 frames .* ffmpeg"):
        Background.video(path, (720, 1280), max_bytes=10 * 720 * 1280 * 3 // 2)
    with pytest.raises(InputError, match="neither a #rrggbb colour nor an existing file"):
        Background.load("sky.png", (720, 1280))


def test_uploaded_pictures_are_refused_by_name_when_they_should_be() -> None:
    with pytest.raises(InputError, match="empty"):
        decode_image(b"", "picture")
    with pytest.raises(UnprocessableError, match="not a picture"):
        decode_image(b"GIF89a but not really", "picture")
    with pytest.raises(LimitError, match="max_image_bytes"):
        decode_image(b"x" * 100, "picture", max_bytes=10)
    declared = io.BytesIO()
    Image.new("1", (5000, 5000)).save(declared, "PNG")  # a few kB that declare 25 million pixels
    with pytest.raises(UnprocessableError, match="5000×5000"):
        decode_image(declared.getvalue(), "picture")
    cut = io.BytesIO()
    Image.new("RGB", (300, 300), (10, 200, 10)).save(cut, "PNG")
    with pytest.raises(UnprocessableError):
        decode_image(cut.getvalue()[:200], "picture")
    assert decode_image(cut.getvalue(), "picture").mode == "RGBA"


def test_viewer_text_is_screened_before_it_may_be_read_aloud() -> None:
    for rude in ("this is sh1t", "F.U.C.K this", "what a Fuuuuck", "b!tch please"):
        assert blocked_words(rude), rude
        with pytest.raises(UnprocessableError, match="will not say"):
            speakable(rude, "the question")
    for fine in ("Is it waterproof?", "class act, assessed and passed", "Does it come in Scunthorpe blue?"):
        assert blocked_words(fine) == [] and speakable(fine, "the question") == fine
    assert blocked_words("this is rubbish", ["rubbish"]) == ["rubbish"]  # a show's own words
    assert flags("x" * 300) == ["too long"]
    with pytest.raises(UnprocessableError, match="at most 200"):
        speakable("x" * 300, "the question")


def test_faq_answers_are_matched_by_their_keywords_and_words() -> None:
    jacket = Product("jacket", "Rain jacket", "$59", faq=(
        FaqEntry("Is it waterproof?", "Yes.", ("waterproof", "rain")),
        FaqEntry("What sizes are there?", "XS to XXL.", ("size", "fit"))))
    shoes = Product("shoes", "Trail shoes", "$89", faq=(FaqEntry("Are they waterproof?", "No.", ()),))
    matches = match_faq("is the jacket waterproof in heavy rain?", [jacket, shoes])
    assert (matches[0].product_id, matches[0].index) == ("jacket", 0)
    assert match_faq("which sizes fit me", [jacket, shoes])[0].answer == "XS to XXL."
    assert match_faq("hello!", [jacket, shoes]) == []
    current = match_faq("are they waterproof", [jacket, shoes], current="shoes")
    assert current[0].product_id == "shoes"  # the product on screen wins a tie


def test_a_show_is_checked_field_by_field_and_reads_back_as_written() -> None:
    show = {"name": "Drop", "segments": [{"title": "Jacket", "product": "jacket", "lines": ["Hello.", "More."],
                                          "elements": ["card", "badge"], "offer": {"text": "-30%", "ends_in_s": 60},
                                          "target_s": 30}], "auto_answer": False}
    parsed = parse_show(show)
    assert parse_show(parsed.to_dict()) == parsed
    with pytest.raises(InputError, match=r"segments\[0\] shows a card but names no product"):
        parse_show({**show, "segments": [{"title": "x", "elements": ["card"]}]})
    with pytest.raises(InputError, match=r"segments\[0\].lines\[1\]"):
        parse_show({**show, "segments": [{"title": "x", "lines": ["fine", "\u200b\u200b"]}]})
    with pytest.raises(InputError, match="unknown field"):
        parse_show({**show, "segmnets": []})
    with pytest.raises(InputError, match="agent_url"):
        parse_show({**show, "agent_url": "file:///etc/passwd"})
