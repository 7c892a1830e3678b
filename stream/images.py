"""Pictures that come from outside (product photos, canvas backgrounds): decoded with Pillow under limits, and
turned into the planar yuv420p the live loop composes in.

An upload is refused by name when it is empty, over its byte limit, not a picture Pillow reads, in a format not
taken, or bigger than ``MAX_IMAGE_PIXELS`` once decoded (a small PNG can declare a gigapixel canvas: the header
is read, and refused, before any pixel is).
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from twincast.errors import InputError, LimitError, UnprocessableError

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
MAX_IMAGE_BYTES = 8 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_IMAGE_SIDE_PX = 8192


def decode_image(payload: bytes, what: str, *, max_bytes: int = MAX_IMAGE_BYTES) -> Image.Image:
    """Decode an uploaded picture to RGBA (the first frame of an animation), refusing what should not be taken.

    Raises:
        InputError: empty.
        LimitError: over ``max_bytes`` (413, ``max_image_bytes``).
        UnprocessableError: not a picture, a format outside ``IMAGE_FORMATS``, over ``MAX_IMAGE_PIXELS`` or
            ``MAX_IMAGE_SIDE_PX``, or truncated.
    """
    if not payload:
        raise InputError(f"the {what} is empty; expected the bytes of a PNG, JPEG, WebP or GIF picture")
    if len(payload) > max_bytes:
        raise LimitError(f"the {what} of {len(payload)} bytes is over the {max_bytes}-byte limit (max_image_bytes)",
                         limit="max_image_bytes", value=max_bytes, http_status=413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(payload), formats=list(IMAGE_FORMATS))
            width, height = picture.size
            if width * height > MAX_IMAGE_PIXELS or max(width, height) > MAX_IMAGE_SIDE_PX:
                raise UnprocessableError(f"the {what} is {width}×{height} pixels; at most {MAX_IMAGE_PIXELS} pixels "
                                         f"({int(MAX_IMAGE_PIXELS ** 0.5)}² or so) and {MAX_IMAGE_SIDE_PX} a side "
                                         "are taken")
            if width < 1 or height < 1:
                raise UnprocessableError(f"the {what} has no pixels ({width}×{height})")
            picture.seek(0)
            return picture.convert("RGBA")
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise UnprocessableError(f"the {what} is not a picture this server takes ({', '.join(IMAGE_FORMATS)}): "
                                 f"{exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # what Pillow raises on a cut or damaged file
        raise UnprocessableError(f"the {what} could not be decoded (cut short or damaged?): {exc}") from exc


def i420_planes(frame: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of the Y, U and V planes of a planar yuv420p frame of shape (height * 3 / 2, width)."""
    luma = frame[:height]
    quarter = height // 4
    chroma_u = frame[height:height + quarter].reshape(height // 2, width // 2)
    chroma_v = frame[height + quarter:height + 2 * quarter].reshape(height // 2, width // 2)
    return luma, chroma_u, chroma_v


def cover(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """``rgb`` scaled to cover ``width``×``height`` and cut to it, centred (no bars, no distortion)."""
    source_height, source_width = rgb.shape[:2]
    scale = max(width / source_width, height / source_height)
    scaled_width, scaled_height = max(width, round(source_width * scale)), max(height, round(source_height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    scaled = cv2.resize(rgb, (scaled_width, scaled_height), interpolation=interpolation)
    left, top = (scaled_width - width) // 2, (scaled_height - height) // 2
    return np.ascontiguousarray(scaled[top:top + height, left:left + width])


def rgb_to_i420(rgb: np.ndarray) -> np.ndarray:
    """An RGB uint8 picture of even width and height as planar yuv420p."""
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV_I420)


def flatten(picture: Image.Image, colour: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """An RGBA picture over a solid ``colour``, as an RGB uint8 array."""
    ground = Image.new("RGBA", picture.size, (*colour, 255))
    ground.alpha_composite(picture)
    return np.asarray(ground.convert("RGB"))
