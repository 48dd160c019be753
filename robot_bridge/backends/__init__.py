from robot_bridge.backends.base import (
    BACKENDS,
    BackendInfo,
    Observation,
    RobotBackend,
    StepOutcome,
    make_backend,
)

__all__ = ["BACKENDS", "BackendInfo", "Observation", "RobotBackend", "StepOutcome", "make_backend"]
