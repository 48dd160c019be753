"""The VLA checkpoint on disk: file names, format versions, reading the configs, checking and
renaming weights. ``policy.vla`` writes and loads checkpoints with these."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
METADATA_NAME = "gymnast_vla.json"
GENERATION_CONFIG_NAME = "generation_config.json"
# 2: config.json is the transformers model config (+ "policy_type"), our metadata in
# gymnast_vla.json. 1 (still read): everything in config.json, the model config under
# "model_config".
FORMAT_VERSION = 2
LEGACY_FORMAT_VERSION = 1
# Keys of ours that config.json carries beside the transformers config: "policy_type" (what the
# station's registry dispatches on) and, when a pipeline copy sets it, "station_temperature".
_OUR_CONFIG_KEYS = ("policy_type", "station_temperature", "format_version")


class CheckpointError(ValueError):
    """A VLA checkpoint directory is missing, malformed or does not fit the model it describes."""


def _unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without tied duplicates (e.g. lm_head tied to the input embeddings)."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        out[name] = t
    return out


def _rename_checkpoint_keys(model: nn.Module, state: dict[str, torch.Tensor]) -> dict:
    """Module names for tensors saved under transformers' on-disk names.

    transformers >= 4.52 renamed some models' modules (PaliGemma: ``language_model.model.*`` ->
    ``model.language_model.*``) and its ``save_pretrained`` writes the old names back, mapping
    them on load with the class's ``_checkpoint_conversion_mapping``; so do we, so a directory
    transformers saved over ours still loads. Names already fitting the model are left alone.
    """
    import re

    mapping = getattr(model, "_checkpoint_conversion_mapping", None) or {}
    if not mapping:
        return state
    expected = set(model.state_dict())
    out = {}
    for key, tensor in state.items():
        if key not in expected:
            for pattern, replacement in mapping.items():
                key, n = re.subn(pattern, replacement, key)
                if n:
                    break
        out[key] = tensor
    return out


def _check_weights(
    expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], path: Path
) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(found[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(found))
        if found[k].shape != expected[k].shape
    ]
    problems = []
    for label, names in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("shape-mismatched", mismatched),
    ):
        if names:
            shown = ", ".join(names[:8]) + (
                f" ... (+{len(names) - 8} more)" if len(names) > 8 else ""
            )
            problems.append(f"{len(names)} {label} tensor(s): {shown}")
    if problems:
        raise CheckpointError(f"weights in {path} do not fit the model: " + "; ".join(problems))


def checkpoint_action_stats(path: str | Path, unnorm_key: str | None = None) -> dict | None:
    """The action stats of an OpenVLA-family checkpoint folder's ``dataset_statistics.json``
    (the ``unnorm_key`` dataset), or None when the folder has no such file."""
    from policy.oft import (
        STATISTICS_NAME,
        oft_action_stats,
        read_dataset_statistics,
        select_statistics,
    )

    file = Path(path) / STATISTICS_NAME
    if not file.is_file():
        if unnorm_key is not None:
            raise CheckpointError(
                f"unnorm_key {unnorm_key!r} is set but {Path(path)} has no {STATISTICS_NAME}"
            )
        return None
    return oft_action_stats(select_statistics(read_dataset_statistics(file), unnorm_key, str(file)))


def read_checkpoint_config(directory: str | Path) -> dict:
    """A VLA checkpoint's metadata, the same dict for both layouts.

    Keys: ``policy_type``, ``format_version``, ``config`` (VLAConfig dict), ``action_stats``,
    ``action_token_start``, ``model_config`` (the transformers config dict, our keys removed),
    ``base_model_path``, ``station_temperature`` (config.json's, where a copy made for a station
    job sets it, wins over gymnast_vla.json's), ``metadata_file`` (where the metadata was read).
    """
    d = Path(directory)
    path = d / CONFIG_NAME
    config = _read_json(path, d)
    if config.get("policy_type") != "vla":
        raise CheckpointError(
            f"{path} has policy_type {config.get('policy_type')!r}, expected 'vla'"
        )
    meta_path = d / METADATA_NAME
    if meta_path.is_file():
        meta = _read_json(meta_path, d)
        if meta.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{meta_path} has format_version {meta.get('format_version')!r}, expected "
                f"{FORMAT_VERSION}"
            )
        meta = dict(meta)
        meta["model_config"] = {k: v for k, v in config.items() if k not in _OUR_CONFIG_KEYS}
        if "station_temperature" in config:
            meta["station_temperature"] = config["station_temperature"]
        meta["metadata_file"] = METADATA_NAME
        required = ("config", "action_stats", "action_token_start")
        where = meta_path
    elif config.get("format_version") == LEGACY_FORMAT_VERSION:
        meta = dict(config, metadata_file=CONFIG_NAME)
        required = ("config", "action_stats", "action_token_start", "model_config")
        where = path
    else:
        raise CheckpointError(
            f"VLA checkpoint {d} has no {METADATA_NAME} (format {FORMAT_VERSION}) and its "
            f"{CONFIG_NAME} has format_version {config.get('format_version')!r}, not the "
            f"legacy {LEGACY_FORMAT_VERSION}"
        )
    missing = [k for k in required if k not in meta]
    if missing:
        raise CheckpointError(f"{where} lacks keys {missing}")
    return meta


def _read_json(path: Path, d: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"VLA checkpoint {d} has no {path.name}")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(doc).__name__}")
    return doc


def _hf_config(meta: dict, trust_remote_code: bool):
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    d = dict(meta["model_config"])
    if "auto_map" in d:  # remote-code architecture (e.g. OpenVLA): its classes live in the base
        if not trust_remote_code:
            raise CheckpointError(
                f"model_config names remote code (auto_map, model_type {d.get('model_type')!r}); "
                "it is loaded only with trust_remote_code=True, for a model of your own, never "
                "on a station"
            )
        base = meta.get("base_model_path")
        if not base or not Path(base).is_dir():
            raise CheckpointError(
                f"model_config uses remote code ({d.get('model_type')}); its base_model_path {base!r} "
                "must be a local directory holding that code"
            )
        return AutoConfig.from_pretrained(base, trust_remote_code=True, local_files_only=True)
    model_type = d.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise CheckpointError(f"unknown transformers model_type {model_type!r} in model_config")
    return CONFIG_MAPPING[model_type].from_dict(d)
