"""Euler angles as the Bridge setup uses them: R = Rz(yaw) @ Ry(pitch) @ Rx(roll)."""

from __future__ import annotations

import math

import numpy as np


def euler_to_matrix(rpy) -> np.ndarray:
    """(roll, pitch, yaw) -> 3x3 rotation matrix, R = Rz(yaw) @ Ry(pitch) @ Rx(roll)."""
    r, p, y = (float(v) for v in rpy)
    cr, sr, cp, sp, cy, sy = (
        math.cos(r),
        math.sin(r),
        math.cos(p),
        math.sin(p),
        math.cos(y),
        math.sin(y),
    )
    return np.array(
        [
            [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
            [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
            [-sp, cp * sr, cp * cr],
        ]
    )


def matrix_to_euler(R: np.ndarray) -> np.ndarray:
    """Inverse of ``euler_to_matrix`` (pitch in [-pi/2, pi/2]), with yaw = 0 at gimbal lock."""
    sy = math.hypot(R[0, 0], R[1, 0])
    if sy > 1e-6:
        return np.array(
            [math.atan2(R[2, 1], R[2, 2]), math.atan2(-R[2, 0], sy), math.atan2(R[1, 0], R[0, 0])]
        )
    return np.array([math.atan2(-R[1, 2], R[1, 1]), math.atan2(-R[2, 0], sy), 0.0])
