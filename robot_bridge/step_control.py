"""Step-by-step control of the arm by one lease holder: the lease, reset/step/observe, recording.

A mixin of ``Station`` (it uses the station's backend, arm lock, e-stop, jobs and config): kept
apart so the safety rules of motion read in one place. The arm moves in ``_step`` only after the
action has been validated (after its float32 cast) and the step's record has been checked and its
disk space reserved, so a step the recorder would refuse never moves the arm.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from dataclasses import dataclass

import numpy as np

from robot_bridge.backends.base import BackendError, Observation
from robot_bridge.episodes import EpisodeMeta, EpisodeWriteError, EpisodeWriter
from robot_bridge.jobs import (
    check_scene,
    check_tasks,
    instruction_set_arg,
    reset_in_scene,
    scene_arg,
    scene_extra,
)
from robot_bridge.protocol import ProtocolError
from robot_bridge.protocol import field as arg
from robot_bridge.spec import (
    TASKS,
    UnknownTaskError,
    clip_action,
    get_task,
    pick_instruction,
    validate_action,
)

log = logging.getLogger("gymnast.station")


@dataclass
class Lease:
    token: str
    holder: str
    deadline: float

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


@dataclass
class StepEpisode:
    """The episode a lease holder is driving step by step."""

    task: str
    instruction: str
    seed: int | None
    writer: EpisodeWriter | None
    max_steps: int
    steps: int = 0
    last_obs: Observation | None = None
    done: bool = False


class StepControl:
    """Lease and step-control handlers of the station (see ``Station``)."""

    # --- lease -----------------------------------------------------------------------------

    def _check_lease(self) -> None:
        if self._lease is not None and self._lease.remaining() < 0:
            log.warning(
                "lease of %s expired: holding the arm and closing its episode", self._lease.holder
            )
            with self._arm:
                self._safe_hold()
                self._close_episode("lease_expired")
            self._lease = None

    def _require_lease(self, header: dict) -> Lease:
        token = header.get("lease")
        lease = self._lease
        if lease is None or token != lease.token:
            holder = f" (held by {lease.holder!r})" if lease else ""
            raise ProtocolError(
                "lease_required",
                f"this operation needs the lease{holder}; call acquire_lease first",
            )
        lease.deadline = time.monotonic() + self.config.lease_timeout_s
        return lease

    def _require_motion_allowed(self) -> None:
        if self._estop.is_set():
            raise ProtocolError(
                "estop_active", f"e-stop is active ({self._estop_reason}); call estop_clear first"
            )
        if self.jobs.running() is not None:
            raise ProtocolError("busy", f"job {self.jobs.running().job_id} is driving the arm")

    def _acquire_lease(self, args: dict, arrays: dict, header: dict) -> tuple[dict, dict]:
        holder = arg(
            args,
            "client",
            str,
            default="anonymous",
            check=lambda s: len(s) <= 128,
            what="<= 128 chars",
        )
        if self._lease is not None and header.get("lease") != self._lease.token:
            raise ProtocolError(
                "leased_by_other",
                f"the arm is leased by {self._lease.holder!r} for another {max(self._lease.remaining(), 0):.1f} s",
            )
        if self.jobs.running() is not None:
            raise ProtocolError("busy", f"job {self.jobs.running().job_id} is driving the arm")
        token = self._lease.token if self._lease else secrets.token_hex(16)
        self._lease = Lease(token, holder, time.monotonic() + self.config.lease_timeout_s)
        return {"lease": token, "timeout_s": self.config.lease_timeout_s}, {}

    def _heartbeat(self, args: dict, arrays: dict, header: dict) -> tuple[dict, dict]:
        lease = self._require_lease(header)
        return {"remaining_s": lease.remaining()}, {}

    def _release_lease(self, args: dict, arrays: dict, header: dict) -> tuple[dict, dict]:
        self._require_lease(header)
        with self._arm:
            closed = self._close_episode("client_ended")
        self._lease = None
        return {"closed_episode": closed}, {}

    # --- step-by-step control ----------------------------------------------------------------

    def _reset(self, args: dict, arrays: dict, header: dict) -> tuple[dict, dict]:
        self._require_lease(header)
        self._require_motion_allowed()
        task = self._task(args)
        seed = arg(
            args,
            "seed",
            int,
            default=None,
            check=lambda s: 0 <= s < 2**63,
            what="a non-negative int64",
        )
        record = arg(args, "record", bool, default=self.config.record_step_control)
        scene = scene_arg(args)
        check_scene(self.backend, scene)
        check_tasks(self.backend, [task])
        instruction_set = instruction_set_arg(args)
        instruction = arg(
            args,
            "instruction",
            str,
            default=None,
            check=lambda s: 0 < len(s) <= 512,
            what="1..512 chars",
        )
        if instruction is not None and instruction_set != "default":
            raise ProtocolError(
                "bad_request",
                f"fields 'instruction' and 'instruction_set' ({instruction_set!r}) exclude each other",
            )
        if instruction is None:
            instruction = pick_instruction(task, instruction_set, seed)
        with self._arm:
            self._close_episode("client_ended")
            obs = self._backend_call(lambda: reset_in_scene(self.backend, task, seed, scene))
            extra = scene_extra(self.backend, scene, instruction_set)
            writer = None
            if record:
                writer = self._open_writer(
                    task, instruction, seed, policy_sha256="remote_control", obs=obs, extra=extra
                )
            self._episode = StepEpisode(
                task, instruction, seed, writer, TASKS[task].max_steps, last_obs=obs
            )
        result = {
            "obs": self._obs_meta(obs),
            "episode_id": writer.meta.episode_id if writer else None,
            "max_steps": TASKS[task].max_steps,
        }
        if instruction_set != "default":
            result["instruction"] = instruction
        if scene is not None:
            result["scene"], result["scene_params"] = scene, extra["scene_params"]
        return result, self._obs_arrays(obs)

    def _step(self, args: dict, arrays: dict, header: dict) -> tuple[dict, dict]:
        self._require_lease(header)
        self._require_motion_allowed()
        ep = self._episode
        if ep is None or ep.done:
            raise ProtocolError("no_episode", "no episode is running; call reset first")
        if "action" not in arrays:
            raise ProtocolError("bad_request", "step needs an 'action' array frame")
        try:
            requested = validate_action(arrays["action"])
        except ValueError as e:
            raise ProtocolError("bad_action", str(e)) from None
        action, dims_clipped = clip_action(requested)
        with self._arm:
            self._prepare_record(ep, action, requested)  # the arm moves only if recordable
            outcome = self._backend_call(lambda: self.backend.step(action))
            obs = outcome.observation
            ep.steps += 1
            success = self.backend.success()
            self._record(ep, action, requested, obs)
            ep.last_obs = obs
            termination = (
                "success" if success else ("max_steps" if ep.steps >= ep.max_steps else None)
            )
            episode_path = None
            if termination is not None:
                episode_path = self._close_episode(termination)
        result = {
            "obs": self._obs_meta(obs),
            "step": ep.steps,
            "executed_action": action.tolist(),
            "clipped": {
                "action_dims": [i for i, c in enumerate(dims_clipped) if c],
                "workspace": outcome.workspace_clipped,
            },
            "success": success,
            "done": termination is not None,
            "termination": termination,
            "episode_file": episode_path,
        }
        return result, self._obs_arrays(obs)

    def _prepare_record(self, ep: StepEpisode, action: np.ndarray, requested: np.ndarray) -> None:
        """Check the step and reserve its disk space before the arm moves."""
        if ep.writer is None:
            return
        try:
            ep.writer.prepare(ep.last_obs, action, requested)
        except ValueError as e:
            raise ProtocolError("bad_action", f"nothing moved; {e}") from None
        except EpisodeWriteError as e:
            self._write_failed(ep, f"nothing moved, arm held safe; {e}")

    def _record(
        self, ep: StepEpisode, action: np.ndarray, requested: np.ndarray, obs: Observation
    ) -> None:
        if ep.writer is None:
            return
        try:
            ep.writer.append(ep.last_obs, action, requested_action=requested)
        except EpisodeWriteError as e:
            self._write_failed(ep, f"arm held safe; {e}")

    def _write_failed(self, ep: StepEpisode, message: str) -> None:
        self._safe_hold()
        ep.writer.close()  # the partial file stays, flagged by its name
        ep.writer, ep.done = None, True
        raise ProtocolError("episode_write_failed", message)

    def _observe(self, args: dict, arrays: dict, header: dict) -> tuple[dict, dict]:
        if self.jobs.running() is not None:
            raise ProtocolError("busy", f"job {self.jobs.running().job_id} is driving the arm")
        with self._arm:
            obs = self.backend.observe()
        return {"obs": self._obs_meta(obs)}, self._obs_arrays(obs)

    def _end_episode(self, args: dict, arrays: dict, header: dict) -> tuple[dict, dict]:
        self._require_lease(header)
        success = arg(args, "success", bool, default=None)
        with self._arm:
            path = self._close_episode("client_ended", operator_success=success)
        return {"episode_file": path}, {}

    def _close_episode(self, termination: str, operator_success: bool | None = None) -> str | None:
        """Finish the step-control episode (if any), keeping every recorded step."""
        ep, self._episode = self._episode, None
        if ep is None or ep.writer is None:
            return None
        writer, ep.writer, ep.done = ep.writer, None, True
        try:
            if ep.last_obs is not None:
                writer.append(ep.last_obs, None)
            truth = self.backend.success()
            if operator_success is not None:
                success, source = operator_success, "operator"
            elif truth is not None:
                success, source = truth, "sim_ground_truth"
            else:
                success, source = None, "none"
            return str(
                writer.finish(success=success, success_source=source, termination=termination)
            )
        except EpisodeWriteError as e:
            writer.close()
            log.error(
                "could not close episode %s: %s (its partial file is kept)",
                writer.meta.episode_id,
                e,
            )
            return None

    def _open_writer(
        self,
        task: str,
        instruction: str,
        seed: int | None,
        policy_sha256: str,
        obs: Observation,
        extra: dict | None = None,
    ) -> EpisodeWriter:
        meta = EpisodeMeta(
            episode_id=f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}",
            task=task,
            instruction=instruction,
            seed=seed,
            station_id=self.config.station_id,
            policy_sha256=policy_sha256,
            backend=self.backend.info.name,
            extra=extra or {},
        )
        try:
            return EpisodeWriter(self.config.episodes_dir, meta, image_shape=obs.image.shape)
        except EpisodeWriteError as e:
            raise ProtocolError("episode_write_failed", str(e)) from None

    def _backend_call(self, fn):
        """Run a backend command; a refusal becomes a clear error reply, a fault also stops the episode."""
        try:
            return fn()
        except BackendError as e:
            if not e.recoverable:
                self._safe_hold()
                self._close_episode("error")
            what = "refused, nothing moved" if e.recoverable else "arm held safe, episode closed"
            raise ProtocolError("backend_error", f"{type(e).__name__}: {e} ({what})") from None

    def _safe_hold(self) -> None:
        try:
            self.backend.hold_safe()
        except Exception:
            log.exception("hold_safe failed")

    # --- helpers ---------------------------------------------------------------------------

    def _task(self, args: dict) -> str:
        name = arg(args, "task", str)
        try:
            return get_task(name).name
        except UnknownTaskError as e:
            raise ProtocolError("unknown_task", str(e)) from None

    def _obs_meta(self, obs: Observation) -> dict:
        return {"timestamp": obs.timestamp, "seq": obs.seq, "station_time": time.monotonic()}

    @staticmethod
    def _obs_arrays(obs: Observation) -> dict[str, np.ndarray]:
        return {"image": obs.image, "state": obs.state}
