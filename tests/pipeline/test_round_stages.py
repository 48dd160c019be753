"""A round's stages on a real simulated station: Dyna exploration samples the policy on seeds of
its own, bootstrapping trains on this configuration's demonstrations only, and the challenger is
the GRPO snapshot with most real successes on check seeds (the earliest of equals)."""

import json

import pytest


@pytest.mark.timeout(300)
def test_exploration_samples_the_policy_on_seeds_of_its_own(tmp_path):
    """Dyna exploration runs a copy of the checkpoint that decodes at the exploration temperature
    (the weights are the same file contents), on seeds disjoint from the greedy collection's; on
    the same seed the greedy policy acts differently, so the world model sees new actions."""
    import numpy as np

    from pipeline.round.config import RoundConfig
    from pipeline.round.stages import collect_episodes, explore_on_station, sampling_checkpoint
    from pipeline.seeds import BENCH_EXPLORE
    from policy.config import VLAConfig
    from policy.vla import VLAPolicy
    from robot_bridge.client import StationClient
    from robot_bridge.episodes import read_episode
    from robot_bridge.launch import StationProcess

    with pytest.raises(ValueError, match="explore_temperature must be > 0"):
        RoundConfig(explore_temperature=0.0)
    with pytest.raises(ValueError, match="explore_episodes_per_task must be >= 0"):
        RoundConfig(explore_episodes_per_task=-1)
    from robot_bridge.policies import write_policy_config

    expert = write_policy_config(tmp_path / "expert", "scripted_expert")
    with pytest.raises(ValueError, match="exploration samples a VLA policy.*'scripted_expert'"):
        sampling_checkpoint(expert, tmp_path / "expert_sampled", 1.0)
    ckpt = VLAPolicy.build(VLAConfig.from_preset("tiny")).save_pretrained(tmp_path / "vla")
    cfg = RoundConfig.from_preset(
        "smoke", tasks=["open_drawer"], explore_episodes_per_task=2, explore_temperature=1.0
    )
    with (
        StationProcess("sim", episodes_dir=tmp_path / "station") as station,
        StationClient(station.endpoint, timeout_s=60) as client,
    ):
        none = explore_on_station(
            client,
            ckpt,
            tmp_path / "none",
            tmp_path / "none_policy",
            RoundConfig.from_preset("smoke"),
            seed=7,
        )
        explored = explore_on_station(
            client, ckpt, tmp_path / "explore", tmp_path / "explore_policy", cfg
        )
        greedy = collect_episodes(
            client,
            ckpt,
            tmp_path / "greedy",
            cfg,
            episodes_per_task=2,
            seed=cfg.seed + BENCH_EXPLORE,
        )
    assert none is None and not (tmp_path / "none").exists()
    sampled_eps = sorted((read_episode(p) for p in explored.episodes), key=lambda e: e.seed)
    greedy_eps = sorted((read_episode(p) for p in greedy.episodes), key=lambda e: e.seed)
    assert [e.seed for e in sampled_eps] == [cfg.seed + BENCH_EXPLORE + i for i in range(2)]
    assert [e.seed for e in greedy_eps] == [e.seed for e in sampled_eps]
    assert explored.checkpoint_sha256 != greedy.checkpoint_sha256  # a copy that decodes sampled
    meta = json.loads((tmp_path / "explore_policy" / "config.json").read_text())
    assert meta["station_temperature"] == 1.0
    for s, g in zip(sampled_eps, greedy_eps, strict=True):
        n = min(len(s.actions), len(g.actions))
        assert not np.allclose(np.asarray(s.actions)[:n], np.asarray(g.actions)[:n])


def test_bootstrap_trains_on_this_configurations_demonstrations_only(tmp_path):
    """A demos folder left by a larger earlier run must not leak into a smaller run's SFT (it did:
    a bench run configured for 16 demonstrations per task trained on the 24 already there)."""
    from pipeline.round.config import RoundConfig
    from pipeline.round.stages import bootstrap_champion
    from robot_bridge.client import StationClient
    from robot_bridge.episodes import list_episodes
    from robot_bridge.launch import StationProcess

    def cfg(n):
        return RoundConfig.from_preset("smoke", tasks=["close_drawer"], demo_episodes_per_task=n)

    with (
        StationProcess("sim", episodes_dir=tmp_path / "station") as station,
        StationClient(station.endpoint, timeout_s=60) as client,
    ):
        big = bootstrap_champion(client, tmp_path / "boot", cfg(3), progress=False)
        small = bootstrap_champion(client, tmp_path / "boot", cfg(2), progress=False)
    assert len(list_episodes(tmp_path / "boot" / "demos")) == 3  # nothing deleted
    assert (big.metrics["demos"], small.metrics["demos"]) == (3, 2)


def test_select_challenger_keeps_the_snapshot_with_most_real_successes_earliest_on_ties(tmp_path):
    """GRPO's snapshots and its final policy run on the same check seeds of their own; the one
    with most real successes is chosen, and of equals the earliest (the nearest the champion)."""
    import dataclasses

    from pipeline.round.config import RoundConfig
    from pipeline.round.stages import (
        challenger_candidates,
        select_challenger,
        snapshot_steps,
        snapshots_dir,
    )
    from pipeline.seeds import BENCH_CHECK
    from robot_bridge.client import StationClient
    from robot_bridge.episodes import list_episodes, read_episode
    from robot_bridge.launch import StationProcess
    from robot_bridge.policies.base import write_policy_config

    assert snapshot_steps(RoundConfig(grpo_steps=80, challenger_snapshots=4)) == [20, 40, 60, 80]
    assert snapshot_steps(RoundConfig(grpo_steps=10, challenger_snapshots=3)) == [3, 7, 10]
    assert snapshot_steps(RoundConfig(grpo_steps=10)) == [10]  # the final policy only

    final = write_policy_config(tmp_path / "rl_policy", "random", seed=1, chunk_size=5)
    snaps = snapshots_dir(final)
    write_policy_config(snaps / "step_0002", "random", seed=2, chunk_size=5)
    write_policy_config(snaps / "step_0004", "scripted_expert")
    cfg = RoundConfig.from_preset(
        "smoke", tasks=["open_drawer"], grpo_steps=6, challenger_snapshots=3
    )
    cfg = dataclasses.replace(cfg, snapshot_check_episodes_per_task=2, seed=3)
    assert challenger_candidates(final) == [snaps / "step_0002", snaps / "step_0004", final]
    with (
        StationProcess("sim", episodes_dir=tmp_path / "station") as station,
        StationClient(station.endpoint, timeout_s=60) as client,
    ):
        chosen, check = select_challenger(client, final, tmp_path / "check", cfg, progress=False)
        assert chosen == snaps / "step_0004" and check["chosen"] == "step_0004"
        assert check["candidates"] == {
            "step_0002": {"open_drawer": 0},
            "step_0004": {"open_drawer": 2},
            "final": {"open_drawer": 0},
        }
        # an equally good earlier snapshot wins the tie
        write_policy_config(snaps / "step_0001", "scripted_expert")
        chosen, check = select_challenger(client, final, tmp_path / "check", cfg, progress=False)
        assert chosen == snaps / "step_0001" and check["candidates"]["step_0001"] == {
            "open_drawer": 2
        }
    for name in ("step_0001", "step_0002", "step_0004", "final"):
        seeds = sorted(
            read_episode(p).seed for p in list_episodes(tmp_path / "check" / f"check_{name}")
        )
        assert seeds == [3 + BENCH_CHECK + i for i in range(2)]
    with pytest.raises(ValueError, match="challenger_snapshots \\(7\\) cannot exceed grpo_steps"):
        RoundConfig(grpo_steps=6, challenger_snapshots=7)
    with pytest.raises(ValueError, match=r"grpo_overrides train_tasks \['close drawer'\] are not"):
        RoundConfig(grpo_overrides={"train_tasks": ["close drawer"]})
    with pytest.raises(ValueError, match=r"world_model_overrides: unknown .*\['anchor'\]"):
        RoundConfig(world_model_overrides={"anchor": True})
    anchored = RoundConfig(world_model_overrides={"anchor_first_frame": True})
    assert anchored.world_model_config().context_slots == 3
    # a per-task evaluation job narrows the round: train_tasks narrow with it, other overrides stay
    closing = RoundConfig(grpo_overrides={"train_tasks": ["close_drawer"], "lr": 1e-5})
    assert closing.for_tasks(["open_drawer"]).grpo_overrides == {"lr": 1e-5}
    narrowed = closing.for_tasks(["close_drawer", "open_drawer"])
    assert narrowed.tasks == ("close_drawer", "open_drawer")
    assert narrowed.grpo_overrides == {"train_tasks": ["close_drawer"], "lr": 1e-5}
