"""One device setting and one precision setting for every stage (SFT, world model, judge, GRPO).

Device settings: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
Precedence: an explicit setting (a trainer argument, a config field) other than ``"auto"`` wins;
``"auto"`` or ``None`` defers to the ``GYMNAST_DEVICE`` environment variable; unset (or
``"auto"`` there too) picks CUDA when ``torch.cuda.is_available()``, else the CPU. So a round
config left at ``device="auto"`` follows the machine it runs on, and ``GYMNAST_DEVICE=cpu``
keeps a GPU box's jobs off its GPU without editing the config.

Precision settings: ``"auto"`` (bf16 on a CUDA device that supports it, fp32 otherwise),
``"fp32"``, ``"bf16"``; ``"auto"`` defers to ``GYMNAST_PRECISION`` the same way. bf16 is
``torch.autocast`` around the forward passes only: weights, optimizer state and the losses stay
fp32 (fp32 master weights). On the CPU ``"auto"`` is fp32 (CPU autocast is slower than fp32 on
CPUs without bfloat16 units, and it changes numerics the tests pin); ``"bf16"`` set explicitly
(the setting, not the environment) autocasts on a CPU with native bfloat16 (Intel AMX or
AVX512-BF16: the tiny world model's sampling about 1.8x, its training step about 1.2x on a 2-core
Xeon with AMX, ``docs/benchmarks.md``) and stays fp32, with a warning, on one without.

It lives in ``robot_bridge`` (the base every package imports) and imports torch inside its
functions only, so importing it costs nothing on a robot host without torch; the station's VLA
policy uses it too (``policy.station``, with ``GYMNAST_VLA_DEVICE`` and a CPU default).
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICE_ENV = "GYMNAST_DEVICE"
PRECISION_ENV = "GYMNAST_PRECISION"
PRECISIONS = ("auto", "fp32", "bf16")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class DeviceError(ValueError):
    """A device or precision setting is malformed, or names hardware this machine lacks."""


def check_device_setting(setting: str | torch.device | None, what: str = "device") -> None:
    """Raise DeviceError unless ``setting`` is None, "auto", "cpu", "cuda" or "cuda:N" (syntax
    only: a config naming CUDA may be written on a machine without one)."""
    import torch

    if setting is None or isinstance(setting, torch.device):
        return
    if not isinstance(setting, str) or not _DEVICE_RE.match(setting.strip().lower()):
        raise DeviceError(f"{what} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {setting!r}")


def check_precision_setting(setting: str | None, what: str = "precision") -> None:
    if setting is not None and setting not in PRECISIONS:
        raise DeviceError(f"{what} must be one of {PRECISIONS}, got {setting!r}")


def resolve_device(
    setting: str | torch.device | None = None,
    *,
    env: str | None = DEVICE_ENV,
    default: str = "auto",
) -> torch.device:
    """The torch device a setting names (see the module docstring for the precedence).

    ``env``: the environment variable consulted when ``setting`` is None or "auto" (None: none).
    ``default``: what ``setting=None`` means when ``env`` is unset too ("auto", or e.g. "cpu" on
    a station); an explicit "auto", in the setting or the environment, always means "auto".
    Asking for CUDA (or a CUDA index) this machine does not have is a DeviceError, not a silent
    fallback to the CPU.
    """
    import torch

    source = "setting"
    if isinstance(setting, torch.device):
        chosen = str(setting)
    else:
        check_device_setting(setting)
        chosen = None if setting is None else setting.strip().lower()
        if chosen in (None, "auto") and env and os.environ.get(env, "").strip():
            chosen = os.environ[env].strip().lower()
            source = f"environment variable {env}"
            check_device_setting(chosen, env)
        if chosen is None:  # nothing said anything: the caller's default
            chosen = default.strip().lower()
            check_device_setting(chosen, "default device")
            source = "default"
    if chosen == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(chosen)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {chosen!r} (from the {source}) asked for CUDA, but torch.cuda.is_available() is False on "
                f"this machine (torch {torch.__version__}, built with CUDA "
                f"{torch.version.cuda or 'none'}); use device 'auto' or 'cpu', or unset "
                f"{env or DEVICE_ENV}"
            )
        n = torch.cuda.device_count()
        if device.index is not None and device.index >= n:
            raise DeviceError(
                f"device {chosen!r} asked for CUDA device {device.index}, but this machine has "
                f"{n} (cuda:0..cuda:{n - 1})"
            )
    elif device.type != "cpu":
        raise DeviceError(f"unsupported device {chosen!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device


def resolve_precision(
    setting: str | None, device: torch.device | str, *, env: str | None = PRECISION_ENV
) -> str:
    """ "fp32" or "bf16" for ``device``: "auto" (or None) defers to ``env``, then picks bf16 on a
    CUDA device that supports it. On the CPU only an explicit ``setting`` "bf16" gives bf16, and
    only on a CPU with native bfloat16 (see the module docstring); bf16 asked for on a CUDA device
    without bf16 is a DeviceError."""
    import torch

    check_precision_setting(setting)
    chosen = setting or "auto"
    if chosen == "auto" and env and os.environ.get(env, "").strip():
        chosen = os.environ[env].strip().lower()
        check_precision_setting(chosen, env)
    device = torch.device(device)
    if device.type != "cuda":
        return "bf16" if setting == "bf16" and cpu_has_native_bf16(warn=True) else "fp32"
    if chosen == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if chosen == "bf16" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"precision 'bf16' asked for, but {device} does not support bfloat16")
    return chosen


def cpu_has_native_bf16(warn: bool = False) -> bool:
    """Whether this CPU computes bfloat16 natively (AMX tiles or AVX512-BF16); ``warn``: say so
    when it does not, since an explicit "bf16" then runs fp32."""
    import torch

    cpu = getattr(torch._C, "_cpu", None)
    native = bool(
        cpu is not None
        and (
            getattr(cpu, "_is_amx_tile_supported", lambda: False)()
            or getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
        )
    )
    if not native and warn:
        warnings.warn(
            "precision 'bf16' asked for on a CPU without native bfloat16 (AMX or AVX512-BF16): "
            "running fp32, which is faster there",
            stacklevel=3,
        )
    return native


def autocast(device: torch.device | str, precision: str):
    """A context: bf16 autocast when ``precision`` is "bf16" (``resolve_precision`` gives it on
    the CPU only where the CPU has native bfloat16), else nothing."""
    import torch

    device = torch.device(device)
    if precision == "bf16" and device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def placement(
    device: str | torch.device | None = None, precision: str | None = None
) -> tuple[torch.device, str]:
    """(device, precision) resolved together: what the trainers call once at their start."""

    dev = resolve_device(device)
    return dev, resolve_precision(precision, dev)


def generator(device: torch.device | str, seed: int) -> torch.Generator:
    """A seeded generator on ``device`` (CUDA sampling refuses a CPU generator)."""
    import torch

    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))
