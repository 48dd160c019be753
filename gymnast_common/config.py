"""One convention for every config dataclass: named presets and JSON-safe dicts.

A config is a dataclass that inherits :class:`Config` and points ``PRESETS`` at its one registry
(preset name -> field values over the dataclass defaults):

- ``from_preset(name, **overrides)``: the preset's fields, then the overrides; an unknown preset
  or field raises an error that lists the valid ones.
- ``to_dict()``: the fields as JSON types (tuples as lists, nested configs as dicts).
- ``from_dict(d)``: the inverse; an unknown field raises (a checkpoint written by other code
  should fail loudly, not lose a setting).

Cross-field checks stay in each config's ``__post_init__``, which also turns the lists of a JSON
dict back into tuples, so ``from_dict(c.to_dict()) == c``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, ClassVar, Self


class ConfigError(ValueError):
    """An unknown preset or field; the message names the valid ones."""


class Config:
    """Mixin for config dataclasses (see the module docstring)."""

    # preset name -> field values; the defaults are one of them (usually "tiny")
    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    # the field that records which preset built the config (e.g. "preset"); None: no such field
    PRESET_FIELD: ClassVar[str | None] = None
    # what unknown presets and fields raise (a package's own ConfigError subclass)
    ERROR: ClassVar[type[ConfigError]] = ConfigError

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Self:
        if name not in cls.PRESETS:
            valid = ", ".join(cls.PRESETS) or "none"
            raise cls.ERROR(f"unknown {cls.__name__} preset {name!r}; valid presets: {valid}")
        cls._refuse_unknown(overrides, "overrides")
        named = {cls.PRESET_FIELD: name} if cls.PRESET_FIELD else {}
        return cls(**{**cls.PRESETS[name], **named, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        cls._refuse_unknown(data, "dict")
        return cls(**data)

    @classmethod
    def _refuse_unknown(cls, data: Mapping[str, Any], what: str) -> None:
        known = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise cls.ERROR(
                f"unknown {cls.__name__} fields {unknown} in {what}; valid fields: {', '.join(known)}"
            )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
