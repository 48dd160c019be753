"""Simulated stations the scene and task tests share: one rendering, one blind (no renderer:
physics and ground truth only), each built once per module."""

import pytest

from robot_bridge.backends.sim import SimBackend

SIZE = 64  # the rendering backend's image size


@pytest.fixture(scope="module")
def sim() -> SimBackend:
    backend = SimBackend(image_size=SIZE)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def blind() -> SimBackend:
    backend = SimBackend(image_size=32, render=False)
    yield backend
    backend.close()
