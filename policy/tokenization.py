"""Action tokens (OpenVLA "BOUNDS_Q99" binning) and the tiny model's text tokenizer.

Actions become tokens per dimension: clip to the dataset's [q01, q99], split that range into
256 equal bins, and map bin ``b`` to vocabulary id ``token_start + b`` where the 256 action ids
are the last 256 ids of the (base) vocabulary, as in OpenVLA. Decoding returns bin centres.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from robot_bridge.spec import AUTOEVAL_TASKS, TASKS

N_BINS = 256
# Ranges narrower than this (a dimension the data never moves, e.g. rotations of a scripted
# expert) are widened around their centre so bins stay well defined.
MIN_RANGE = 1e-4
PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"


def format_prompt(instruction: str) -> str:
    """OpenVLA prompt; instructions are lower-cased and stripped as OpenVLA does."""
    text = instruction.strip().rstrip(".").lower()
    if not text:
        raise ValueError(f"instruction must be a non-empty string, got {instruction!r}")
    return PROMPT_TEMPLATE.format(instruction=text)


@dataclass
class ActionTokenizer:
    """Per-dimension uniform bins between q01 and q99 (both (action_dim,) float)."""

    q01: np.ndarray
    q99: np.ndarray
    token_start: int
    n_bins: int = N_BINS

    def __post_init__(self) -> None:
        self.q01 = np.asarray(self.q01, dtype=np.float64).reshape(-1)
        self.q99 = np.asarray(self.q99, dtype=np.float64).reshape(-1)
        if self.q01.shape != self.q99.shape:
            raise ValueError(
                f"q01 and q99 must have the same shape, got {self.q01.shape} and {self.q99.shape}"
            )
        if not (np.all(np.isfinite(self.q01)) and np.all(np.isfinite(self.q99))):
            raise ValueError(f"action stats must be finite, got q01={self.q01} q99={self.q99}")
        if np.any(self.q99 < self.q01):
            raise ValueError(
                f"q99 must be >= q01 in every dimension, got q01={self.q01} q99={self.q99}"
            )
        if self.token_start < 0:
            raise ValueError(f"token_start must be >= 0, got {self.token_start}")
        centre = (self.q01 + self.q99) / 2
        half = np.maximum(self.q99 - self.q01, MIN_RANGE) / 2
        self._low, self._high = centre - half, centre + half

    @property
    def action_dim(self) -> int:
        return self.q01.shape[0]

    @property
    def bin_width(self) -> np.ndarray:
        return (self._high - self._low) / self.n_bins

    @classmethod
    def from_actions(
        cls, actions: np.ndarray, token_start: int, n_bins: int = N_BINS
    ) -> ActionTokenizer:
        """Fit q01/q99 on (N, action_dim) actions."""
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] == 0:
            raise ValueError(f"need a non-empty (N, action_dim) action array, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("actions contain NaN or inf; cannot compute q01/q99")
        return cls(np.quantile(a, 0.01, axis=0), np.quantile(a, 0.99, axis=0), token_start, n_bins)

    def to_bins(self, actions: np.ndarray) -> np.ndarray:
        """(..., action_dim) float -> (..., action_dim) int64 bins in [0, n_bins)."""
        a = np.asarray(actions, dtype=np.float64)
        if a.shape[-1] != self.action_dim:
            raise ValueError(f"actions must end in {self.action_dim} dims, got shape {a.shape}")
        u = (np.clip(a, self._low, self._high) - self._low) / (self._high - self._low)
        return np.minimum((u * self.n_bins).astype(np.int64), self.n_bins - 1)

    def from_bins(self, bins: np.ndarray) -> np.ndarray:
        """(..., action_dim) int bins -> (..., action_dim) float32 bin centres."""
        b = np.asarray(bins)
        if b.min(initial=0) < 0 or b.max(initial=0) >= self.n_bins:
            raise ValueError(
                f"bins must lie in [0, {self.n_bins}), got range [{b.min()}, {b.max()}]"
            )
        return (self._low + (b + 0.5) * self.bin_width).astype(np.float32)

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """(B, K, action_dim) float -> (B, K * action_dim) vocabulary ids."""
        a = np.asarray(actions)
        if a.ndim != 3:
            raise ValueError(f"actions must be (B, K, {self.action_dim}), got shape {a.shape}")
        return self.to_bins(a).reshape(a.shape[0], -1) + self.token_start  # (B, K*D)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """(B, K * action_dim) vocabulary ids -> (B, K, action_dim) float32 bin centres."""
        t = np.asarray(tokens)
        if t.ndim != 2 or t.shape[1] % self.action_dim:
            raise ValueError(f"tokens must be (B, K*{self.action_dim}), got shape {t.shape}")
        bins = t.reshape(t.shape[0], -1, self.action_dim) - self.token_start  # (B, K, D)
        return self.from_bins(bins)

    def to_dict(self) -> dict:
        return {
            "q01": self.q01.tolist(),
            "q99": self.q99.tolist(),
            "n_bins": self.n_bins,
            "norm": "BOUNDS_Q99",
        }

    @classmethod
    def from_dict(cls, d: dict, token_start: int) -> ActionTokenizer:
        return cls(
            np.asarray(d["q01"]), np.asarray(d["q99"]), token_start, int(d.get("n_bins", N_BINS))
        )


# Extra text so instructions beyond the four AutoEval tasks still tokenize into sensible pieces
# (byte-level BPE makes any string encodable; this just keeps new words short).
_EXTRA_CORPUS = [
    "pick up the spoon and place it on the towel",
    "move the red block to the left of the green cup",
    "push the blue bowl towards the orange plate",
    "take the carrot out of the pot and put it in the bowl",
    "open the cabinet door, close the microwave, lift the lid",
    "stack the cube on top of the other cube",
    "flip the pot upright, wipe the table with the cloth",
    "put the banana, corn, mushroom or knife in the drawer",
    "place the yellow, white, black, purple or pink object in the sink",
    "rotate grasp release slide pull fold sweep pour turn",
    "left right up down front back near far top bottom middle",
]
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]


def query_token_names(n: int) -> list[str]:
    return [f"<q_{i}>" for i in range(n)]


def action_token_names(n_bins: int = N_BINS) -> list[str]:
    return [f"<act_{i}>" for i in range(n_bins)]


def build_tiny_tokenizer(num_queries: int, bpe_vocab_size: int):
    """Byte-level BPE trained on the task instructions, with the 256 action tokens appended.

    Layout of the base vocabulary: special tokens (incl. ``<image>`` and one ``<q_i>`` placeholder
    per action position), the BPE vocabulary, then ``<act_0>..<act_255>`` as its last 256 ids.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GemmaTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        special_tokens=SPECIAL_TOKENS + query_token_names(num_queries),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # the AutoEval tasks only: the tiny vocabulary (and every tiny checkpoint's token ids) stays
    # what it was before the language tasks; byte-level BPE still spells their instructions
    corpus = [format_prompt(TASKS[t].instruction) for t in AUTOEVAL_TASKS] * 8 + _EXTRA_CORPUS
    tok.train_from_iterator(corpus, trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    base = len(vocab)
    vocab.update({name: base + i for i, name in enumerate(action_token_names())})
    tok = Tokenizer.from_str(json.dumps(spec))
    return GemmaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        add_bos_token=False,
        add_eos_token=False,
    )


def build_tiny_processor(
    image_size: int, num_image_tokens: int, num_queries: int, bpe_vocab_size: int
):
    """A real ``PaliGemmaProcessor`` (SigLIP image processor + BPE tokenizer) for the tiny VLA."""
    from transformers import PaliGemmaProcessor, SiglipImageProcessorFast

    image_processor = SiglipImageProcessorFast(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    image_processor.image_seq_length = num_image_tokens
    tokenizer = build_tiny_tokenizer(num_queries, bpe_vocab_size)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    # PaliGemmaProcessor appends its <loc>/<seg> detection tokens after the base vocabulary, so
    # the action tokens stay the last 256 ids of the base vocabulary (``tokenizer.vocab_size``).
    return PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
