"""Head pose (yaw, pitch, roll in degrees) from 2-D face landmarks, by solvePnP on a generic 3-D face.

The 3-D points are the widely used generic face model of six landmarks (nose tip, chin, outer eye corners,
mouth corners; millimetre-like units, nose tip at the origin). Absolute angles are approximate; what twincast
needs is that the same function ranks poses consistently for the operator's webcam and the twin's footage.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# FaceMesh indices of: nose tip, chin, left eye outer corner, right eye outer corner, left mouth corner,
# right mouth corner ("left" = image left).
POSE_LANDMARKS = (1, 152, 33, 263, 61, 291)
GENERIC_FACE_3D = np.array([
    (0.0, 0.0, 0.0),
    (0.0, -330.0, -65.0),
    (-225.0, 170.0, -135.0),
    (225.0, 170.0, -135.0),
    (-150.0, -150.0, -125.0),
    (150.0, -150.0, -125.0),
], dtype=np.float64)


def head_pose(points: np.ndarray, image_size: tuple[int, int]) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a (468, 2) landmark array in an image of (width, height).

    Yaw is positive when the face turns to the image right, pitch when it tilts up, roll when it leans
    clockwise in the image.
    """
    width, height = image_size
    focal = float(max(width, height))
    camera = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], dtype=np.float64)
    image_points = points[list(POSE_LANDMARKS)].astype(np.float64)
    # The model's y axis points up and the image's down: flip the model so solvePnP sees a consistent face.
    model = GENERIC_FACE_3D * np.array([1.0, -1.0, -1.0])
    ok, rotation_vector, _ = cv2.solvePnP(model, image_points, camera, np.zeros(4), flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return math.nan, math.nan, math.nan
    rotation, _ = cv2.Rodrigues(rotation_vector)
    # Euler angles of R = Rz(roll) · Ry(yaw) · Rx(pitch).
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, -rotation[2, 0]))))
    pitch = math.degrees(math.atan2(rotation[2, 1], rotation[2, 2]))
    roll = math.degrees(math.atan2(rotation[1, 0], rotation[0, 0]))
    return yaw, -pitch, roll

