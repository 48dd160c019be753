"""The one config convention (``gymnast_common.config``), checked the same way for every config."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from gymnast_common.config import ConfigError


def assert_follows_the_config_convention(cls: type, preset: str, **overrides: Any) -> None:
    """``cls.from_preset(preset, **overrides)`` round-trips through JSON, and an unknown preset
    or field is refused with the valid ones named. ``overrides`` should move some fields off
    their defaults (tuples, nested configs), so the round trip has something to carry."""
    config = cls.from_preset(preset, **overrides)
    for name, value in overrides.items():
        assert getattr(config, name) == value, name
    as_json = json.loads(json.dumps(config.to_dict()))
    assert as_json == config.to_dict()  # JSON types only
    assert cls.from_dict(as_json) == config

    valid = re.escape(", ".join(cls.PRESETS) or "none")
    with pytest.raises(
        ConfigError, match=rf"^unknown {cls.__name__} preset 'huge'; valid presets: {valid}$"
    ):
        cls.from_preset("huge")
    field = re.escape(next(iter(as_json)))
    with pytest.raises(
        ConfigError,
        match=rf"^unknown {cls.__name__} fields \['no_such_field'\] in overrides; "
        rf"valid fields: {field}, ",
    ):
        cls.from_preset(preset, no_such_field=1)
    with pytest.raises(
        ConfigError, match=rf"^unknown {cls.__name__} fields \['no_such_field'\] in dict"
    ):
        cls.from_dict({**as_json, "no_such_field": 1})
