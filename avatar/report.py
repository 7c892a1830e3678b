"""The enrollment report: a JSON summary of what was kept and why, and a contact sheet a person can glance at."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avatar.audio import VIDEO_FPS, rms_dbfs
from avatar.quality import FLAG_BITS, FLAG_REASONS
from avatar.video_io import VideoInfo
from twincast.files import atomic_write_bytes

SHEET_COLUMNS = 6
SHEET_ROWS = 5
_TILE_PX = 160
_COLOURS = {  # RGB
    "ok": (40, 170, 70), "holdout": (60, 110, 220), "idle": (230, 190, 40),
    "no_face": (120, 120, 120), "other_face_dominant": (200, 60, 200), "low_confidence": (240, 140, 30),
    "occluded_mouth": (220, 40, 40), "extreme_pose": (150, 80, 30), "motion_blur": (90, 200, 220),
    "scene_cut": (20, 20, 20), "damaged": (255, 80, 160),
}


def rejected_counts(flags: np.ndarray) -> dict[str, int]:
    """Frames carrying each flag (a frame may carry several)."""
    return {reason: int(np.count_nonzero(flags & FLAG_BITS[reason])) for reason in FLAG_REASONS}


def _range(values: np.ndarray) -> list[float] | None:
    values = values[~np.isnan(values)]
    return [round(float(values.min()), 1), round(float(values.max()), 1)] if values.size else None


def summarise(*, video: Path, info: VideoInfo, flags: np.ndarray, valid: np.ndarray, pose: np.ndarray,
              holdout: tuple[int, int], idle: list[dict[str, Any]], base_range: tuple[int, int],
              reference_bank: list[int], speech: np.ndarray, level: np.ndarray, audio: np.ndarray,
              faces_seen: np.ndarray, damage: dict[str, Any]) -> dict[str, Any]:
    """The report's content (also returned by ``enroll``)."""
    count = flags.shape[0]
    train = valid.copy()
    train[holdout[0] : holdout[1]] = False
    speech_level = level[speech]
    return {
        "video": str(video),
        "source": {"format": info.format_name, "codec": info.video_codec, "fps": round(info.fps, 3),
                   "size": [info.width, info.height], "rotation": info.rotation, "audio_codec": info.audio_codec,
                   "audio_rate_hz": info.audio_rate_hz, "audio_channels": info.audio_channels},
        "duration_s": round(count / VIDEO_FPS, 2),
        "frames": count,
        "usable_frames": int(valid.sum()),
        "usable_s": round(float(valid.sum()) / VIDEO_FPS, 2),
        "trainable_s": round(float(train.sum()) / VIDEO_FPS, 2),
        "rejected_frames": rejected_counts(flags),
        "damage": damage,
        "max_faces_in_a_frame": int(faces_seen.max()) if faces_seen.size else 0,
        "pose_range_deg": {axis: _range(pose[valid, i].astype(np.float64)) for i, axis in
                           enumerate(("yaw", "pitch", "roll"))},
        "holdout": {"frames": list(holdout), "seconds": [round(h / VIDEO_FPS, 2) for h in holdout]},
        "idle_segments": [{**seg, "start_s": round(int(seg["start"]) / VIDEO_FPS, 2),
                           "end_s": round(int(seg["end"]) / VIDEO_FPS, 2)} for seg in idle],
        "base_loop": {"frames": list(base_range), "seconds": round((base_range[1] - base_range[0]) / VIDEO_FPS, 2)},
        "reference_bank": reference_bank,
        "audio": {
            "rms_dbfs": round(rms_dbfs(audio), 1),
            "peak_dbfs": round(float(20 * np.log10(np.abs(audio).max() + 1e-9)), 1),
            "speech_fraction": round(float(speech.mean()), 3),
            "speech_rms_dbfs": round(float(10 * np.log10(np.mean(10 ** (speech_level / 10)))), 1)
            if speech_level.size else None,
        },
    }


def write_json(path: Path, summary: dict[str, Any]) -> None:
    """Write the report atomically."""
    atomic_write_bytes(path, (json.dumps(summary, indent=1) + "\n").encode())


def sheet_indices(frame_count: int) -> np.ndarray:
    """The frames shown on the contact sheet: evenly spread over the clip."""
    tiles = min(frame_count, SHEET_COLUMNS * SHEET_ROWS)
    return np.unique(np.linspace(0, frame_count - 1, tiles).round().astype(int))


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """A full frame fitted into a tile, RGB uint8 (_TILE_PX, _TILE_PX, 3), letterboxed."""
    height, width = rgb.shape[:2]
    scale = _TILE_PX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    tile = np.zeros((_TILE_PX, _TILE_PX, 3), np.uint8)
    top, left = (_TILE_PX - size[1]) // 2, (_TILE_PX - size[0]) // 2
    tile[top : top + size[1], left : left + size[0]] = small
    return tile


def frame_status(index: int, flags: np.ndarray, holdout: tuple[int, int], idle: list[dict[str, Any]]) -> str:
    """How the sheet labels a frame: its first rejection reason, else holdout, idle or ok."""
    for reason in FLAG_REASONS:
        if flags[index] & FLAG_BITS[reason]:
            return reason
    if holdout[0] <= index < holdout[1]:
        return "holdout"
    if any(int(seg["start"]) <= index < int(seg["end"]) for seg in idle):
        return "idle"
    return "ok"


def contact_sheet(thumbs: dict[int, np.ndarray], crops: np.ndarray, flags: np.ndarray, holdout: tuple[int, int],
                  idle: list[dict[str, Any]], base_range: tuple[int, int], *, title: str) -> np.ndarray:
    """A grid of frames (full frame and aligned crop side by side, framed in the status colour, labelled with
    time and status) over a timeline of every frame's status and a legend. RGB uint8."""
    pair_w = 2 * _TILE_PX
    cell_h = _TILE_PX + 22
    rows = max(1, -(-len(thumbs) // SHEET_COLUMNS))
    header, timeline_h, legend_h = 34, 40, 26 * math.ceil(len(_COLOURS) / 5)
    sheet = np.full((header + rows * cell_h + timeline_h + legend_h, SHEET_COLUMNS * pair_w, 3), 245, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    usable = int(np.count_nonzero(flags == 0))
    cv2.putText(sheet, f"{title}: {flags.shape[0] / VIDEO_FPS:.1f} s, usable {usable / VIDEO_FPS:.1f} s, "
                f"base loop {base_range[0] / VIDEO_FPS:.1f}-{base_range[1] / VIDEO_FPS:.1f} s",
                (8, 23), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    for slot, index in enumerate(sorted(thumbs)):
        top = header + (slot // SHEET_COLUMNS) * cell_h
        left = (slot % SHEET_COLUMNS) * pair_w
        crop = cv2.resize(crops[index], (_TILE_PX, _TILE_PX), interpolation=cv2.INTER_AREA)
        sheet[top : top + _TILE_PX, left : left + _TILE_PX] = thumbs[index]
        sheet[top : top + _TILE_PX, left + _TILE_PX : left + pair_w] = crop
        status = frame_status(index, flags, holdout, idle)
        colour = _COLOURS[status]
        cv2.rectangle(sheet, (left + 1, top + 1), (left + pair_w - 2, top + _TILE_PX - 2), colour, 3)
        cv2.putText(sheet, f"{index / VIDEO_FPS:6.1f}s {status}", (left + 6, top + _TILE_PX + 16), font, 0.45,
                    colour, 1, cv2.LINE_AA)
    top = header + rows * cell_h + 6
    width = sheet.shape[1] - 16
    for index in range(flags.shape[0]):
        x0 = 8 + index * width // flags.shape[0]
        x1 = max(x0 + 1, 8 + (index + 1) * width // flags.shape[0])
        sheet[top : top + timeline_h - 12, x0:x1] = _COLOURS[frame_status(index, flags, holdout, idle)]
    top += timeline_h
    for slot, (name, colour) in enumerate(_COLOURS.items()):
        x = 8 + (slot % 5) * (sheet.shape[1] // 5)
        y = top + 16 + (slot // 5) * 24
        cv2.rectangle(sheet, (x, y - 11), (x + 14, y + 1), colour, -1)
        cv2.putText(sheet, name, (x + 20, y), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return sheet
