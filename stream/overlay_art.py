"""How the on-screen elements look: their pictures drawn with Pillow (text shaped and antialiased by FreeType),
and where each sits on a frame of a given size (``ElementLayout``).

Sizes are in units of a 720-pixel frame side (``unit``), so the same show reads the same on 720×1280, 1080×1920,
1280×720 or a pack's own small square frame. Fonts: ``serve.overlay_font`` when given, else DejaVu Sans (Debian's
``fonts-dejavu-core``), else Pillow's own scalable font.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"),
             Path("/usr/local/share/fonts"), Path("/Library/Fonts"))
FONT_FILES = {"regular": "DejaVuSans.ttf", "bold": "DejaVuSans-Bold.ttf"}
PANEL = (17, 19, 26, 228)
TEXT = (245, 246, 250, 255)
MUTED = (170, 176, 190, 255)
PRICE = (255, 206, 61, 255)
ACCENT = (233, 61, 86, 255)
CODE = (72, 214, 168, 255)
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@functools.cache
def font(weight: str, size_px: int) -> Font:
    """A font of ``weight`` (regular, bold) at ``size_px``: DejaVu Sans where installed, else Pillow's own."""
    for folder in FONT_DIRS:
        path = folder / FONT_FILES[weight]
        if path.is_file():
            return ImageFont.truetype(str(path), size_px)
    return ImageFont.load_default(size_px)


@dataclass(frozen=True)
class CardContent:
    """What a product card shows (the catalogue's product, as text and a picture)."""

    name: str
    price: str
    was_price: str = ""
    bullets: tuple[str, ...] = ()
    footer: str = ""  # a discount code or a link
    picture: Image.Image | None = None


@dataclass(frozen=True)
class ElementLayout:
    """Where the elements go on a frame of ``width``×``height``: portrait frames stack them under the twin,
    landscape and square frames keep the card to the right."""

    width: int
    height: int

    @property
    def portrait(self) -> bool:
        """Taller than wide by a fifth or more (9:16 and the like)."""
        return self.height > 1.2 * self.width

    @property
    def unit(self) -> float:
        """Pixels per unit: sizes are given for a 720-pixel short side."""
        return min(self.width, self.height) / 720

    def px(self, units: float) -> int:
        """``units`` in pixels (at least 1)."""
        return max(1, round(units * self.unit))

    @property
    def margin(self) -> int:
        """Space between an element and the frame's edge."""
        return self.px(24)

    @property
    def ticker_height(self) -> int:
        """Height of the ticker strip."""
        return self.px(56)

    def card_size(self) -> tuple[int, int]:
        """(width, height) of the product card."""
        if self.portrait:
            return self.width - 2 * self.margin, self.px(300)
        return min(self.px(580), self.width // 2 - self.margin), self.px(300)

    def card_origin(self) -> tuple[int, int]:
        """Top-left corner of the card: above the ticker, across the width (portrait) or on the right."""
        card_width, card_height = self.card_size()
        top = self.height - self.ticker_height - self.margin - card_height
        return (self.margin if self.portrait else self.width - self.margin - card_width), top

    def lower_third_origin(self, size: tuple[int, int]) -> tuple[int, int]:
        """Top-left corner of the lower third: over the card (portrait), or bottom left."""
        if self.portrait:
            return self.margin, self.card_origin()[1] - self.margin - size[1]
        return self.margin, self.height - self.ticker_height - self.margin - size[1]

    def badge_origin(self, size: tuple[int, int]) -> tuple[int, int]:
        """Top-left corner of the badge: the top right."""
        return self.width - self.margin - size[0], self.margin + self.px(8)

    def ticker_top(self, strip_height: int) -> int:
        """Top of the ticker strip: the bottom edge."""
        top = self.height - strip_height
        return top - top % 2


def _fit(text: str, face: Font, width_px: float) -> str:
    """``text`` cut to fit ``width_px`` with an ellipsis."""
    if face.getlength(text) <= width_px:
        return text
    while text and face.getlength(text + "…") > width_px:
        text = text[:-1]
    return text.rstrip() + "…"


def _wrap(text: str, face: Font, width_px: float, max_lines: int) -> list[str]:
    """``text`` broken into at most ``max_lines`` lines of ``width_px`` (the last one cut with an ellipsis)."""
    lines: list[str] = []
    words = text.split()
    while words and len(lines) < max_lines:
        line = words.pop(0)
        while words and face.getlength(line + " " + words[0]) <= width_px:
            line += " " + words.pop(0)
        lines.append(line)
    if words and lines:
        lines[-1] = _fit(lines[-1] + " " + " ".join(words), face, width_px)
    return [_fit(line, face, width_px) for line in lines]


def _even(size: tuple[int, int]) -> tuple[int, int]:
    return size[0] + size[0] % 2, size[1] + size[1] % 2


def draw_card(layout: ElementLayout, content: CardContent) -> Image.Image:
    """The product card: the picture on the left; name, price (the old one struck through), up to three bullet
    points and the code or link on the right, on a dark rounded panel."""
    width, height = _even(layout.card_size())
    px = layout.px
    picture = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(picture)
    draw.rounded_rectangle((0, 0, width - 1, height - 1), radius=px(22), fill=PANEL, outline=(255, 255, 255, 48),
                           width=px(2))
    pad = px(20)
    text_left = pad
    if content.picture is not None:
        side = min(height - 2 * pad, int(width * 0.34))
        thumb = ImageOps.pad(content.picture.convert("RGBA"), (side, side), color=(255, 255, 255, 255))
        rounded = Image.new("L", (side, side), 0)
        ImageDraw.Draw(rounded).rounded_rectangle((0, 0, side - 1, side - 1), radius=px(16), fill=255)
        picture.paste(thumb, (pad, pad), rounded)
        text_left = pad + side + pad
    room = width - text_left - pad
    y = pad
    name_font = font("bold", px(32))
    for line in _wrap(content.name, name_font, room, 2):
        draw.text((text_left, y), line, font=name_font, fill=TEXT)
        y += px(38)
    y += px(4)
    price_font = font("bold", px(44))
    draw.text((text_left, y), _fit(content.price, price_font, room), font=price_font, fill=PRICE)
    if content.was_price:
        was_font = font("regular", px(26))
        was_left = text_left + price_font.getlength(content.price) + px(16)
        if was_left + was_font.getlength(content.was_price) <= width - pad:
            was_top = y + px(14)
            draw.text((was_left, was_top), content.was_price, font=was_font, fill=MUTED)
            middle = was_top + px(15)
            draw.line((was_left, middle, was_left + was_font.getlength(content.was_price), middle), fill=MUTED,
                      width=px(3))
    y += px(56)
    bullet_font = font("regular", px(23))
    footer_room = px(40) if content.footer else 0
    for bullet in content.bullets[:3]:
        if y + px(28) > height - pad - footer_room:
            break
        draw.text((text_left, y), _fit("• " + bullet, bullet_font, room), font=bullet_font, fill=TEXT)
        y += px(30)
    if content.footer:
        code_font = font("bold", px(22))
        label = _fit(content.footer, code_font, room - px(20))
        box_top = height - pad - px(34)
        draw.rounded_rectangle((text_left, box_top, text_left + code_font.getlength(label) + px(20),
                                box_top + px(34)), radius=px(17), fill=(24, 70, 58, 255))
        draw.text((text_left + px(10), box_top + px(5)), label, font=code_font, fill=CODE)
    return picture


def draw_lower_third(layout: ElementLayout, title: str, subtitle: str) -> Image.Image:
    """The lower third: the host's name in bold over a line of detail, an accent bar on the left."""
    px = layout.px
    title_font, subtitle_font = font("bold", px(36)), font("regular", px(24))
    most = layout.width - 2 * layout.margin
    title = _fit(title, title_font, most - px(48))
    subtitle = _fit(subtitle, subtitle_font, most - px(48)) if subtitle else ""
    text_width = max(title_font.getlength(title), subtitle_font.getlength(subtitle) if subtitle else 0)
    width, height = _even((min(most, int(text_width) + px(48)), px(100) if subtitle else px(66)))
    picture = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(picture)
    draw.rounded_rectangle((0, 0, width - 1, height - 1), radius=px(12), fill=PANEL)
    draw.rectangle((0, 0, px(8), height - 1), fill=ACCENT)
    draw.text((px(26), px(10)), title, font=title_font, fill=TEXT)
    if subtitle:
        draw.text((px(26), px(58)), subtitle, font=subtitle_font, fill=MUTED)
    return picture


def draw_badge(layout: ElementLayout, text: str, lines: list[str]) -> Image.Image:
    """The offer badge: ``text`` large (a price, "-30%"), then smaller lines (a detail, the countdown)."""
    px = layout.px
    big, small = font("bold", px(40)), font("bold", px(22))
    most = layout.width // 2
    text = _fit(text, big, most - px(36))
    lines = [_fit(line, small, most - px(36)) for line in lines]
    text_width = max([big.getlength(text), *(small.getlength(line) for line in lines)])
    width, height = _even((int(text_width) + px(36), px(62) + px(30) * len(lines)))
    picture = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(picture)
    draw.rounded_rectangle((0, 0, width - 1, height - 1), radius=px(18), fill=ACCENT)
    draw.text((width / 2, px(10)), text, font=big, fill=TEXT, anchor="mt")
    for index, line in enumerate(lines):
        draw.text((width / 2, px(62) + px(30) * index), line, font=small, fill=TEXT, anchor="mt")
    return picture


def draw_ticker_strip(layout: ElementLayout, text: str) -> Image.Image:
    """One period of the ticker: ``text`` and a separator on the strip's dark band, at least a frame wide
    (short text repeats), of an even width."""
    px = layout.px
    face = font("regular", px(26))
    piece = text + "   •   "
    repeats = max(1, -(-layout.width // max(1, int(face.getlength(piece)))))
    period = piece * repeats
    width, height = _even((int(face.getlength(period)) + 1, layout.ticker_height))
    picture = Image.new("RGBA", (width, height), (10, 12, 16, 214))
    ImageDraw.Draw(picture).text((0, height / 2), period, font=face, fill=TEXT, anchor="lm")
    return picture
