"""Face landmarks with mediapipe FaceMesh (468 points), and the index sets twincast uses.

mediapipe is imported lazily, so the package imports on machines that only serve.
"""

from __future__ import annotations

import contextlib
import io
import os
from types import TracebackType
from typing import Any

import numpy as np

# Index sets of mediapipe's 468-point face mesh ("left" = image left).
LEFT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
RIGHT_EYE = (362, 382, 381, 380, 374, 373, 390, 249, 263, 466, 388, 387, 386, 385, 384, 398)
LEFT_UPPER_LID = (246, 161, 160, 159, 158, 157, 173)
RIGHT_UPPER_LID = (398, 384, 385, 386, 387, 388, 466)
NOSE_TIP = 1
UPPER_LIP_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_LIP_INNER = (95, 88, 178, 87, 14, 317, 402, 318, 324)
UPPER_LIP_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LOWER_LIP_OUTER = (146, 91, 181, 84, 17, 314, 405, 321, 375)
MOUTH_CORNERS = (61, 291)
JAW = (172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397)
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148,
             176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
FOREHEAD_TOP = 10
CHIN = 152
LIP_INNER_TOP = 13
LIP_INNER_BOTTOM = 14
UPPER_LIP_TOP = 0


def eye_centres(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the image-left and image-right eye contours."""
    return points[list(LEFT_EYE)].mean(axis=0), points[list(RIGHT_EYE)].mean(axis=0)


def mouth_opening(points: np.ndarray) -> float:
    """Mouth-and-jaw opening: upper-lip top to chin over the distance between the eye centres.

    The inner-lip points of FaceMesh follow teeth and dark cavities poorly (on the synthetic footage their gap
    correlates 0.2 with the true opening), while the upper-lip-to-chin span correlates above 0.9, so the
    outer contour and the jaw are measured instead.
    """
    left, right = eye_centres(points)
    interocular = float(np.linalg.norm(right - left))
    span = float(np.linalg.norm(points[CHIN] - points[UPPER_LIP_TOP]))
    return span / interocular if interocular > 0 else 0.0


class FaceLandmarker:
    """mediapipe FaceMesh over RGB frames; one instance per thread.

    Args:
        video: track across consecutive frames (faster, steadier) instead of detecting on each image.
        max_faces: faces to look for; the first is returned by ``detect``.
    """

    def __init__(self, *, video: bool = True, max_faces: int = 1, min_confidence: float = 0.5) -> None:
        os.environ.setdefault("GLOG_minloglevel", "2")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with contextlib.redirect_stderr(io.StringIO()):
            import mediapipe as mp

            self._mesh: Any = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=not video,
                max_num_faces=max_faces,
                refine_landmarks=False,
                min_detection_confidence=min_confidence,
                min_tracking_confidence=min_confidence,
            )

    def detect_all(self, rgb: np.ndarray) -> list[np.ndarray]:
        """All faces found, each as (468, 2) float32 pixel coordinates."""
        height, width = rgb.shape[:2]
        result = self._mesh.process(np.ascontiguousarray(rgb))
        faces = []
        for face in result.multi_face_landmarks or []:
            coords = np.array([(p.x * width, p.y * height) for p in face.landmark[:468]], dtype=np.float32)
            faces.append(coords)
        return faces

    def detect(self, rgb: np.ndarray) -> np.ndarray | None:
        """The first face found as (468, 2) float32 pixel coordinates, or None."""
        faces = self.detect_all(rgb)
        return faces[0] if faces else None

    def close(self) -> None:
        """Release the mediapipe graph."""
        self._mesh.close()

    def __enter__(self) -> FaceLandmarker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
