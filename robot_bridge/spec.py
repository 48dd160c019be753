"""Bridge / AutoEval conventions shared by every part of the station.

Actions, states, images and tasks follow the WidowX Bridge setup so that real lab data and
checkpoints fit: 5 Hz end-effector delta control, a 7-D action
``[dx, dy, dz, droll, dpitch, dyaw, gripper]`` and a 7-D state ``[x, y, z, roll, pitch, yaw,
gripper]`` (angles relative to the gripper-down pose), one third-person RGB camera, uint8.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONTROL_HZ = 5.0
ACTION_DIM = 7
STATE_DIM = 7
IMAGE_SHAPE = (256, 256, 3)  # (H, W, C) uint8 on the wire

MAX_DELTA_POS = 0.05  # metres per step
MAX_DELTA_ROT = 0.25  # radians per step

# Target-pose workspace box (metres), as in bridge_data_robot's default.
WORKSPACE_LOW = np.array([0.10, -0.15, -0.10], dtype=np.float32)
WORKSPACE_HIGH = np.array([0.45, 0.25, 0.18], dtype=np.float32)

ACTION_LOW = np.array([-MAX_DELTA_POS] * 3 + [-MAX_DELTA_ROT] * 3 + [0.0], dtype=np.float32)
ACTION_HIGH = np.array([MAX_DELTA_POS] * 3 + [MAX_DELTA_ROT] * 3 + [1.0], dtype=np.float32)


@dataclass(frozen=True)
class Task:
    name: str
    instruction: str
    max_steps: int


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("open_drawer", "open the drawer", 70),
        Task("close_drawer", "close the drawer", 70),
        Task("eggplant_in_sink", "put the eggplant in the blue sink", 100),
        Task("eggplant_in_basket", "put the eggplant in the yellow basket", 100),
        Task("blue_cup_on_plate", "put the blue cup on the plate", 100),
        Task("red_cup_on_plate", "put the red cup on the plate", 100),
    )
}

# The four AutoEval tasks: the default task set of every command, round and benchmark.
AUTOEVAL_TASKS: tuple[str, ...] = (
    "open_drawer",
    "close_drawer",
    "eggplant_in_sink",
    "eggplant_in_basket",
)
# Tasks only the instruction tells apart: both cups stand on the table in both, so a policy that
# ignores the language succeeds on at most about half of their episodes. Simulator only.
LANGUAGE_TASKS: tuple[str, ...] = ("blue_cup_on_plate", "red_cup_on_plate")


# Paraphrases of each task's instruction, split once and for all: training code may see the
# "train" ones (``training_instructions``); the "heldout" ones exist for evaluation only, so a
# policy's success on them measures language generalisation, not memory.
PARAPHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "open_drawer": {
        "train": (
            "pull the drawer open",
            "open the orange drawer",
            "slide the drawer out",
            "pull out the drawer",
        ),
        "heldout": (
            "can you open up the drawer",
            "get the drawer open",
            "draw the drawer out towards you",
        ),
    },
    "close_drawer": {
        "train": (
            "push the drawer closed",
            "shut the drawer",
            "slide the drawer back in",
            "push the orange drawer shut",
        ),
        "heldout": (
            "close up the open drawer",
            "push the drawer all the way in",
            "make sure the drawer is shut",
        ),
    },
    "eggplant_in_sink": {
        "train": (
            "place the eggplant in the sink",
            "move the purple eggplant into the blue sink",
            "pick up the eggplant and drop it in the sink",
            "put the aubergine in the sink",
        ),
        "heldout": (
            "the eggplant goes in the blue basin",
            "set the purple vegetable down inside the sink",
            "transfer the eggplant to the blue sink",
        ),
    },
    "eggplant_in_basket": {
        "train": (
            "place the eggplant in the basket",
            "move the purple eggplant into the yellow basket",
            "pick up the eggplant and drop it in the basket",
            "put the aubergine in the yellow basket",
        ),
        "heldout": (
            "the eggplant goes in the yellow bin",
            "set the purple vegetable down inside the basket",
            "transfer the eggplant to the yellow basket",
        ),
    },
    "blue_cup_on_plate": {
        "train": (
            "place the blue cup on the plate",
            "move the blue cup onto the plate",
            "pick up the blue cup and set it on the plate",
            "put the blue mug on the plate",
        ),
        "heldout": (
            "the blue cup goes on the plate",
            "set the blue one down on the dish",
            "transfer the blue cup onto the white plate",
        ),
    },
    "red_cup_on_plate": {
        "train": (
            "place the red cup on the plate",
            "move the red cup onto the plate",
            "pick up the red cup and set it on the plate",
            "put the red mug on the plate",
        ),
        "heldout": (
            "the red cup goes on the plate",
            "set the red one down on the dish",
            "transfer the red cup onto the white plate",
        ),
    },
}

# What a job or a reset may ask for: the task's own instruction, or a paraphrase from one split.
INSTRUCTION_SETS = ("default", "train", "heldout")


def training_instructions(task: str) -> tuple[str, ...]:
    """Every instruction training code may use for ``task``: its own and the training
    paraphrases, never a held-out one."""
    return (get_task(task).instruction, *PARAPHRASES[get_task(task).name]["train"])


def paraphrased_tasks() -> tuple[str, ...]:
    """The tasks that have paraphrases (every task here; a lab's new task may not)."""
    return tuple(PARAPHRASES)


def own_instruction(instruction: str) -> str:
    """The task's own instruction for one of its training paraphrases, else ``instruction``."""
    for task, sets in PARAPHRASES.items():
        if instruction in sets["train"]:
            return TASKS[task].instruction
    return instruction


def evaluation_only(instruction: str) -> bool:
    """True for a held-out paraphrase: training code asks this to refuse one, never to use it."""
    return any(instruction in sets["heldout"] for sets in PARAPHRASES.values())


def pick_instruction(task: str, instruction_set: str, seed: int | None) -> str:
    """The instruction of one episode: the task's own for ``"default"``, else the paraphrase of
    the set at ``seed`` modulo its size (consecutive seeds cycle through the set evenly; an
    unseeded episode draws one at random)."""
    if instruction_set not in INSTRUCTION_SETS:
        raise ValueError(
            f"unknown instruction set {instruction_set!r}; valid sets: {', '.join(INSTRUCTION_SETS)}"
        )
    t = get_task(task)
    if instruction_set == "default":
        return t.instruction
    options = PARAPHRASES[t.name][instruction_set]
    index = seed if seed is not None else int(np.random.default_rng().integers(len(options)))
    return options[index % len(options)]


class UnknownTaskError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def get_task(name: str) -> Task:
    """Look a task up by name; an unknown name lists the valid ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(
            f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}"
        ) from None


def validate_action(action: np.ndarray) -> np.ndarray:
    """Check dtype-agnostic shape and finiteness; return a float32 copy. Raises ValueError."""
    a = np.asarray(action)
    if a.shape != (ACTION_DIM,):
        raise ValueError(f"action must have shape ({ACTION_DIM},), got {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"action must be a float array, got dtype {a.dtype}")
    # Checked after the cast: a float64 1e39 is finite but becomes inf as float32.
    with np.errstate(over="ignore"):
        cast = a.astype(np.float32, copy=True)
    if not np.all(np.isfinite(cast)):
        raise ValueError(
            f"action contains NaN or inf, or a value beyond float32's range: {a.tolist()}"
        )
    return cast


def clip_action(action: np.ndarray) -> tuple[np.ndarray, tuple[bool, ...]]:
    """Clip a validated action to the Bridge per-step bounds."""
    action = np.asarray(action, dtype=np.float32)
    clipped = np.clip(action, ACTION_LOW, ACTION_HIGH)
    return clipped, tuple(bool(x) for x in (clipped != action))


def clip_target_position(target_xyz: np.ndarray) -> tuple[np.ndarray, bool]:
    """Clip a target end-effector position to the workspace box."""
    target = np.asarray(target_xyz, dtype=np.float32)  # compare like with like
    clipped = np.clip(target, WORKSPACE_LOW, WORKSPACE_HIGH)
    return clipped, bool(np.any(clipped != target))
