"""One device / precision setting (robot_bridge.devices) and every trainer honouring it.

On a CPU machine: the resolver's rules (auto, explicit CUDA without CUDA, environment vs setting),
the configs' validation, and a 1-2 step tiny run of each trainer with ``device="cpu"`` passed
explicitly, checking the model's parameters and the batches its forward pass sees are on the
resolved device. The same runs on CUDA in bf16 are marked ``gpu`` (skipped without one).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from small_models import SyntheticEpisode

from robot_bridge import devices
from robot_bridge.devices import (
    DeviceError,
    autocast,
    placement,
    resolve_device,
    resolve_precision,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in (devices.DEVICE_ENV, devices.PRECISION_ENV, "GYMNAST_VLA_DEVICE"):
        monkeypatch.delenv(name, raising=False)


no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")


# --- the resolver ---------------------------------------------------------------------------------


def test_auto_and_none_pick_cuda_when_present_else_cpu(monkeypatch):
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == want
    assert resolve_device("auto").type == want
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@no_cuda
def test_explicit_cuda_without_cuda_is_a_clear_error():
    for setting in ("cuda", "cuda:0", "CUDA:1"):
        with pytest.raises(DeviceError, match="is_available"):
            resolve_device(setting)


def test_a_cuda_index_past_the_device_count_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(DeviceError, match="cuda:0..cuda:0"):
        resolve_device("cuda:3")


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "mps", "", "  "])
def test_malformed_settings_are_refused(bad):
    with pytest.raises(DeviceError, match="'auto', 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device(bad)


def test_the_environment_fills_in_auto_and_an_explicit_setting_wins(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv(devices.DEVICE_ENV, "cpu")
    assert resolve_device("auto") == torch.device("cpu")  # env over auto
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setenv(devices.DEVICE_ENV, "cuda")
    assert resolve_device("cpu") == torch.device("cpu")  # explicit over env
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setenv(devices.DEVICE_ENV, "auto")
    assert resolve_device(None) == torch.device("cuda")
    monkeypatch.setenv(devices.DEVICE_ENV, "tpu")
    with pytest.raises(DeviceError, match=devices.DEVICE_ENV):
        resolve_device("auto")


def test_a_default_other_than_auto_applies_only_when_nothing_is_set(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None, env="X_UNSET_GYMNAST", default="cpu") == torch.device("cpu")
    monkeypatch.setenv("X_UNSET_GYMNAST", "auto")
    assert resolve_device(None, env="X_UNSET_GYMNAST", default="cpu") == torch.device("cuda")


def test_precision_on_cpu_is_fp32_unless_bf16_is_asked_for_on_a_bf16_cpu(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda warn=False: True)
    for setting in (None, "auto", "fp32"):
        assert resolve_precision(setting, cpu) == "fp32"
    monkeypatch.setenv(devices.PRECISION_ENV, "bf16")
    assert resolve_precision("auto", cpu) == "fp32"  # the environment never turns it on
    assert resolve_precision("bf16", cpu) == "bf16"
    assert placement("cpu", "bf16") == (cpu, "bf16")
    with autocast(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    # a CPU without bfloat16 units: fp32 with a warning, and autocast does nothing
    monkeypatch.undo()
    monkeypatch.setattr(torch._C._cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch._C._cpu, "_is_avx512_bf16_supported", lambda: False)
    with pytest.warns(UserWarning, match="without native bfloat16"):
        assert resolve_precision("bf16", cpu) == "fp32"
    with autocast(cpu, "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(DeviceError, match="precision"):
        resolve_precision("fp16", cpu)


def test_precision_on_cuda_is_bf16_where_supported(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    cuda = torch.device("cuda")
    assert resolve_precision("auto", cuda) == "bf16"
    assert resolve_precision("fp32", cuda) == "fp32"
    monkeypatch.setenv(devices.PRECISION_ENV, "fp32")
    assert resolve_precision("auto", cuda) == "fp32"  # env over auto
    assert resolve_precision("bf16", cuda) == "bf16"  # explicit over env
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    with pytest.raises(DeviceError, match="bfloat16"):
        resolve_precision("bf16", cuda)


def test_configs_check_their_device_and_precision_settings():
    from pipeline.round.config import RoundConfig
    from policy.grpo import GRPOConfig
    from reward.config import JudgeConfigError, VLMJudgeConfig

    assert RoundConfig().device == "auto" and RoundConfig().precision == "auto"
    assert RoundConfig(device="cuda:1", precision="bf16").device == "cuda:1"  # syntax only
    with pytest.raises(DeviceError, match="RoundConfig.device"):
        RoundConfig(device="gpu")
    with pytest.raises(DeviceError, match="RoundConfig.precision"):
        RoundConfig(precision="fp16")
    assert GRPOConfig.from_preset("tiny").device == "auto"
    with pytest.raises(DeviceError, match="GRPOConfig.device"):
        GRPOConfig.from_preset("tiny", device="tpu")
    assert VLMJudgeConfig().device == "auto"
    with pytest.raises(JudgeConfigError):
        VLMJudgeConfig(device="gpu0")


def test_the_station_device_defaults_to_cpu_and_reads_only_its_own_variable(monkeypatch):
    from policy.station import DEVICE_ENV, station_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv(devices.DEVICE_ENV, "cuda")  # the trainers' setting: not the station's
    assert station_device() == torch.device("cpu")
    monkeypatch.setenv(DEVICE_ENV, "auto")
    assert station_device() == torch.device("cuda")
    monkeypatch.setenv(DEVICE_ENV, "cuda:")
    with pytest.raises(DeviceError, match=DEVICE_ENV):
        station_device()


# --- the trainers -------------------------------------------------------------------------------


def episodes(n: int = 4, steps: int = 6, size: int = 32) -> list[SyntheticEpisode]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        frames = rng.integers(0, 256, (steps + 1, size, size, 3), dtype=np.uint8)
        frames[:, : size // 2] = 40 if i % 2 else 200  # a visible difference between the labels
        actions = rng.uniform(-0.02, 0.02, (steps, 7)).astype(np.float32)
        actions[:, 6] = rng.integers(0, 2, steps)
        out.append(SyntheticEpisode(frames, actions, success=bool(i % 2), episode_id=f"ep-{i}"))
    return out


class InputDevices:
    """A forward pre-hook recording the device of every tensor a module is called with."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.seen: set[torch.device] = set()
        self.handle = module.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        for x in [*args, *kwargs.values()]:
            if torch.is_tensor(x):
                self.seen.add(x.device)

    def remove(self) -> set[torch.device]:
        self.handle.remove()
        return self.seen


def assert_on(module: torch.nn.Module, device: torch.device) -> None:
    devs = {p.device for p in module.parameters()} | {b.device for b in module.buffers()}
    assert devs == {device}, devs  # and so none on 'meta'
    assert {p.dtype for p in module.parameters()} == {torch.float32}  # fp32 master weights


def small_world_model_config():
    from small_models import small_config

    return small_config()


def run_sft(device, precision):
    from policy.config import VLAConfig
    from policy.sft import SFTConfig, train_sft
    from policy.vla import VLAPolicy

    policy = VLAPolicy.build(VLAConfig.from_preset("tiny"))
    spy = InputDevices(policy.model)
    config = SFTConfig(steps=2, batch_size=4, device=device, precision=precision)
    policy, metrics = train_sft(policy, episodes(), config, progress=False)
    return policy, metrics, spy.remove()


def run_world_model(device, precision):
    from world_model.model import ActionConditionedWorldModel
    from world_model.train import WorldModelTrainConfig, train_world_model

    model = ActionConditionedWorldModel(small_world_model_config())
    spy = InputDevices(model.backbone)
    config = WorldModelTrainConfig(steps=2, batch_size=4, device=device, precision=precision)
    model, metrics = train_world_model(model, episodes(), config, progress=False)
    return model, metrics, spy.remove()


def run_judge(device, precision):
    from reward.config import JudgeTrainConfig, VLMJudgeConfig
    from reward.train import finetune_judge
    from reward.vlm import VLMJudge

    judge = VLMJudge.from_config(VLMJudgeConfig(device="cpu"), instructions=["open the drawer"])
    spy = InputDevices(judge.model.model)
    config = JudgeTrainConfig(steps=2, batch_size=4, device=device, precision=precision)
    judge, metrics = finetune_judge(judge, episodes(), config, progress=False)
    return judge, metrics, spy.remove()


def test_sft_puts_the_policy_and_its_batches_on_the_device():
    policy, metrics, seen = run_sft("cpu", None)
    assert_on(policy.model, torch.device("cpu"))
    assert seen == {torch.device("cpu")}
    assert (metrics["device"], metrics["precision"]) == ("cpu", "fp32")
    assert len(metrics["loss"]) == 2 and np.isfinite(metrics["loss"]).all()


def test_world_model_training_puts_the_model_and_its_batches_on_the_device():
    # bf16 autocasts on a CPU with bfloat16 units (AMX, AVX512-BF16), else trains fp32
    model, metrics, seen = run_world_model("cpu", "bf16")
    assert_on(model, torch.device("cpu"))
    assert seen == {torch.device("cpu")}
    bf16 = "bf16" if devices.cpu_has_native_bf16() else "fp32"
    assert (metrics["device"], metrics["precision"]) == ("cpu", bf16)
    assert np.isfinite(metrics["loss"]).all()


def test_judge_finetuning_puts_the_judge_and_its_batches_on_the_device():
    judge, metrics, seen = run_judge("cpu", None)
    assert judge.device == torch.device("cpu")
    assert_on(judge.model, torch.device("cpu"))
    assert seen == {torch.device("cpu")}
    assert (metrics["device"], metrics["precision"]) == ("cpu", "fp32")


def test_grpo_places_policy_world_model_and_judge_on_its_device(tmp_path):
    from policy.config import VLAConfig
    from policy.grpo import GRPOConfig, Start, train_grpo
    from policy.vla import VLAPolicy
    from reward.config import VLMJudgeConfig
    from reward.judge import load_judge
    from reward.vlm import VLMJudge
    from world_model.model import ActionConditionedWorldModel

    policy = VLAPolicy.build(VLAConfig.from_preset("tiny"))
    wm = ActionConditionedWorldModel(small_world_model_config())
    VLMJudge.from_config(VLMJudgeConfig(), instructions=["open the drawer"]).save_pretrained(
        tmp_path / "judge"
    )
    judge = load_judge(tmp_path / "judge", device="cpu")
    assert judge.device == torch.device("cpu") and judge.config.device == "auto"
    cfg = GRPOConfig.from_preset(
        "tiny", group_size=2, starts_per_step=1, horizon_chunks=1, steps=1, judge_samples=1,
        device="cpu", filter_low=0.0, filter_high=1.0,
    )  # fmt: skip
    spy = InputDevices(policy.model)
    frame = episodes(1)[0].frames[0]
    history = train_grpo(policy, wm, judge, [Start(frame, "open the drawer")], cfg, progress=False)
    assert len(history) == 1
    assert spy.remove() == {torch.device("cpu")}
    for m in (policy.model, wm, judge.model):
        assert_on(m, torch.device("cpu"))


def test_checkpoints_load_onto_the_asked_device(tmp_path):
    from policy.config import VLAConfig
    from policy.vla import VLAPolicy
    from world_model.model import ActionConditionedWorldModel

    VLAPolicy.build(VLAConfig.from_preset("tiny")).save_pretrained(tmp_path / "vla")
    ActionConditionedWorldModel(small_world_model_config()).save_pretrained(tmp_path / "wm")
    assert_on(VLAPolicy.from_pretrained(tmp_path / "vla", device="cpu").model, torch.device("cpu"))
    assert_on(
        ActionConditionedWorldModel.from_pretrained(tmp_path / "wm", "cpu"), torch.device("cpu")
    )
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError):
            ActionConditionedWorldModel.from_pretrained(tmp_path / "wm", device="cuda")


# --- on a GPU -----------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("run", [run_sft, run_world_model, run_judge])
def test_trainers_on_cuda_in_bf16_keep_fp32_weights_on_the_gpu(run):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model, metrics, seen = run("cuda", "bf16")
    module = model.model if hasattr(model, "model") else model
    assert_on(module, torch.device("cuda", 0))
    assert {d.type for d in seen} == {"cuda"}
    assert metrics["precision"] == "bf16" and metrics["device"].startswith("cuda")
