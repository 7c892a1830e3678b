"""The product catalogue: what a show sells — name, price, old price, bullet points, a code or link, a picture, and
the answers to questions viewers ask about it (its FAQ).

One catalogue per server, kept in ``serve.commerce_dir`` (``products.json`` and ``images/ID.png``), each write to
a temporary file renamed into place, so a crash never leaves half a catalogue. Pictures are decoded, checked
(``images.decode_image``), scaled to at most ``MAX_PICTURE_PX`` a side and stored as PNG without their metadata:
what was uploaded is never served back as it came.
"""

from __future__ import annotations

import io
import json
import re
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from stream.images import decode_image
from stream.openapi import check_json
from twincast.errors import InputError, LimitError, NotFoundError, UnprocessableError
from twincast.files import atomic_write_bytes

MAX_PRODUCTS = 500
MAX_PICTURE_PX = 1024
MAX_FAQ = 30
PRODUCT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
SHORT = {"type": "string", "minLength": 1, "maxLength": 80}
PRICE = {"type": "string", "maxLength": 24, "description": "as shown, with its currency: $59.00, 59,00 €"}
FAQ_ENTRY = {"type": "object", "required": ["question", "answer"], "additionalProperties": False,
             "properties": {"question": {"type": "string", "minLength": 1, "maxLength": 200},
                            "answer": {"type": "string", "minLength": 1, "maxLength": 600},
                            "keywords": {"type": "array", "maxItems": 12,
                                         "items": {"type": "string", "minLength": 1, "maxLength": 40}}}}
PRODUCT_FIELDS: dict[str, Any] = {
    "name": SHORT, "price": PRICE, "was_price": PRICE,
    "bullets": {"type": "array", "maxItems": 5, "items": {"type": "string", "minLength": 1, "maxLength": 80}},
    "code": {"type": "string", "maxLength": 40, "description": "a discount code shown on the card"},
    "link": {"type": "string", "maxLength": 200, "description": "a short link shown on the card"},
    "faq": {"type": "array", "maxItems": MAX_FAQ, "items": FAQ_ENTRY},
}
NEW_PRODUCT = {"type": "object", "required": ["name", "price"], "additionalProperties": False,
               "properties": {"id": {"type": "string", "pattern": PRODUCT_ID.pattern}, **PRODUCT_FIELDS}}
PRODUCT_CHANGE = {"type": "object", "additionalProperties": False, "properties": PRODUCT_FIELDS}


@dataclass(frozen=True)
class FaqEntry:
    """A question viewers ask about a product, its answer, and the words that find it (``chat.match_faq``)."""

    question: str
    answer: str
    keywords: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"question": self.question, "answer": self.answer, "keywords": list(self.keywords)}


@dataclass(frozen=True)
class Product:
    """One product of the catalogue."""

    product_id: str
    name: str
    price: str
    was_price: str = ""
    bullets: tuple[str, ...] = ()
    code: str = ""
    link: str = ""
    faq: tuple[FaqEntry, ...] = ()
    picture_version: int = 0  # 0: no picture; bumped on every upload
    updated_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the API's and the file's form)."""
        data = asdict(self)
        data["id"] = data.pop("product_id")
        data["bullets"] = list(self.bullets)
        data["faq"] = [entry.to_dict() for entry in self.faq]
        data["has_picture"] = self.picture_version > 0
        return data

    @property
    def footer(self) -> str:
        """What the card shows under the bullets: the code, else the link."""
        return f"Code {self.code}" if self.code else self.link


def _fields(body: dict[str, Any]) -> dict[str, Any]:
    """Request fields → ``Product`` fields (text stripped; lists as tuples)."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key == "id":
            continue
        if key == "bullets":
            out[key] = tuple(item.strip() for item in value if item.strip())
        elif key == "faq":
            out[key] = tuple(FaqEntry(entry["question"].strip(), entry["answer"].strip(),
                                      tuple(word.strip().lower() for word in entry.get("keywords", ())
                                            if word.strip())) for entry in value)
        else:
            out[key] = value.strip()
    for key in ("name", "price"):
        if key in out and not out[key]:
            raise InputError(f'"{key}" is blank; expected some text')
    return out


def prepare_picture(payload: bytes, what: str) -> bytes:
    """An uploaded picture checked, scaled to at most ``MAX_PICTURE_PX`` a side and re-encoded as PNG without
    its metadata (blocking: run it in an executor).

    Raises:
        InputError, LimitError, UnprocessableError: see ``images.decode_image``.
    """
    picture = decode_image(payload, what)
    picture.thumbnail((MAX_PICTURE_PX, MAX_PICTURE_PX))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


class Catalogue:
    """The products, in the order they were added, kept on disk under ``root`` (made on demand).

    Every change is made on the event loop (a picture is prepared in an executor first, ``prepare_picture``),
    so the list and its file never disagree.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._products: dict[str, Product] = {}
        self._load()

    @property
    def _file(self) -> Path:
        return self.root / "products.json"

    def _picture_file(self, product_id: str) -> Path:
        return self.root / "images" / f"{product_id}.png"

    def _load(self) -> None:
        if not self._file.is_file():
            return
        try:
            saved = json.loads(self._file.read_text())
            for entry in saved["products"]:
                check_json(NEW_PRODUCT, {key: value for key, value in entry.items()
                                         if key not in ("has_picture", "picture_version", "updated_at")})
                product = Product(entry["id"], **_fields(entry))
                self._products[product.product_id] = replace(
                    product, picture_version=int(entry.get("picture_version", 0)),
                    updated_at=float(entry.get("updated_at", time.time())))
        except (ValueError, KeyError, TypeError, InputError) as exc:
            raise InputError(f"the catalogue {self._file} cannot be read ({exc}); fix or move it away") from exc

    def _save(self) -> None:
        payload = json.dumps({"products": [p.to_dict() for p in self._products.values()]}, indent=1)
        atomic_write_bytes(self._file, payload.encode())

    def list(self) -> list[Product]:
        """Every product."""
        return list(self._products.values())

    def get(self, product_id: str) -> Product:
        """A product by id.

        Raises:
            NotFoundError: no such product.
        """
        product = self._products.get(product_id)
        if product is None:
            raise NotFoundError(f"no product {product_id!r}")
        return product

    def create(self, body: dict[str, Any]) -> Product:
        """Add a product (``body`` checked against ``NEW_PRODUCT``); its id is given or made from its name.

        Raises:
            InputError: a taken id, a blank name or price.
            LimitError: ``MAX_PRODUCTS`` already (413).
        """
        check_json(NEW_PRODUCT, body)
        if len(self._products) >= MAX_PRODUCTS:
            raise LimitError(f"the catalogue holds at most {MAX_PRODUCTS} products", limit="max_products",
                             value=MAX_PRODUCTS, http_status=413)
        product_id = body.get("id") or self._new_id(body["name"])
        if product_id in self._products:
            raise InputError(f"product id {product_id!r} is taken; choose another or PUT to change it")
        product = Product(product_id, **_fields(body))
        self._products[product_id] = product
        self._save()
        return product

    def _new_id(self, name: str) -> str:
        stem = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:30] or "product"
        candidate = stem if PRODUCT_ID.match(stem) else "product"
        while candidate in self._products:
            candidate = f"{stem[:30]}-{uuid.uuid4().hex[:4]}"
        return candidate

    def update(self, product_id: str, body: dict[str, Any]) -> Product:
        """Change some fields of a product (``body`` checked against ``PRODUCT_CHANGE``)."""
        check_json(PRODUCT_CHANGE, body)
        product = replace(self.get(product_id), **_fields(body), updated_at=time.time())
        self._products[product_id] = product
        self._save()
        return product

    def delete(self, product_id: str) -> None:
        """Remove a product and its picture."""
        self.get(product_id)
        del self._products[product_id]
        self._picture_file(product_id).unlink(missing_ok=True)
        self._save()

    def set_picture(self, product_id: str, png: bytes) -> Product:
        """Store a picture made by ``prepare_picture`` as the product's (on the event loop, like every change).

        Raises:
            NotFoundError: no such product.
        """
        product = self.get(product_id)
        atomic_write_bytes(self._picture_file(product_id), png)
        product = replace(product, picture_version=product.picture_version + 1, updated_at=time.time())
        self._products[product_id] = product
        self._save()
        return product

    def picture_bytes(self, product_id: str) -> bytes:
        """The stored PNG of a product.

        Raises:
            NotFoundError: no such product, or it has no picture.
        """
        product = self.get(product_id)
        path = self._picture_file(product_id)
        if not product.picture_version or not path.is_file():
            raise NotFoundError(f"product {product_id!r} has no picture; PUT one to /api/products/{product_id}/picture")
        return path.read_bytes()

    def picture(self, product_id: str) -> Image.Image | None:
        """The stored picture as RGBA, or None when it has none."""
        try:
            payload = self.picture_bytes(product_id)
        except NotFoundError:
            return None
        try:
            return Image.open(io.BytesIO(payload)).convert("RGBA")
        except OSError as exc:
            raise UnprocessableError(f"the stored picture of {product_id!r} cannot be read: {exc}") from exc
