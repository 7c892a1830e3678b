"""Fragmented MP4, the recordings' format: what of a file cut off mid-write (a full disk, a killed process) is whole.

A fragmented MP4 (ISO/IEC 14496-12 §8.8) writes its track headers first (``ftyp``, ``moov``) and then the media
as fragments, each a ``moof`` (what the samples are) followed by its ``mdat`` (the samples): every fragment that
is on disk entirely plays without the rest, so a recording cut off anywhere keeps everything up to its last whole
fragment (one GOP, 2 s, at most is lost). A plain MP4 keeps its index (``moov``) for the end, and without it the
whole file is unreadable.
"""

from __future__ import annotations

import struct
from pathlib import Path

# A fragment per keyframe; the moov is written when the first fragment is cut (delay_moov), once the AAC
# encoder's priming delay is known, so its edit list trims it and sound and picture start together (with an
# empty moov the sound would play 21 ms late and the picture's rate read as 24.8 fps).
# Each fragment goes to the file as it is cut (flush_packets), not when FFmpeg's 32 KiB write buffer fills: a
# still twin encodes to a few kB/s, so unflushed the file could lag a minute behind.
FRAGMENTED_MP4_OPTIONS = {"movflags": "+frag_keyframe+delay_moov+default_base_moof", "flush_packets": "1"}


def whole_fragments_bytes(path: Path) -> int:
    """The length of ``path`` up to the end of its last whole fragment (a ``moof`` and its ``mdat``), after its
    ``moov``; 0 when no fragment is whole (nothing in the file plays).

    Boxes (§4.2): a 32-bit big-endian size and a four-character type; size 1 means a 64-bit size follows, size 0
    that the box runs to the end of the file. A box that claims more bytes than are left was cut off.
    """
    file_bytes = path.stat().st_size
    whole = offset = 0
    seen_moov = False
    previous = b""
    with path.open("rb") as handle:
        while offset + 8 <= file_bytes:
            handle.seek(offset)
            header = handle.read(16)
            box_bytes, box_type = struct.unpack(">I4s", header[:8])
            if box_bytes == 1:
                if len(header) < 16:
                    break
                box_bytes = struct.unpack(">Q", header[8:16])[0]
            elif box_bytes == 0:
                box_bytes = file_bytes - offset
            if box_bytes < 8 or offset + box_bytes > file_bytes:
                break  # cut off inside this box
            offset += box_bytes
            seen_moov = seen_moov or box_type == b"moov"
            if box_type == b"mdat" and previous == b"moof" and seen_moov:
                whole = offset
            previous = box_type
    return whole
