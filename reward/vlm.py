"""A PaliGemma-style VLM success judge (transformers), tiny (built locally) or large (local path).

The judge asks "Did the robot {instruction}? Answer yes or no." about an image made from the end
of the rollout and scores P(yes) / (P(yes) + P(no)) from the next-token logits, as AutoEval's
finetuned PaliGemma does. The tiny preset looks at the final frame at 64x64: success in the four
AutoEval tasks is a property of the final state (drawer open / closed, eggplant in the sink /
basket), a single frame keeps all 64x64 pixels for it, and 64 px is about what a CPU-trained world
model produces, so real and imagined rollouts are scored at the same resolution. More frames
(``frames_per_image`` = 4, 9, ...) are tiled into a square grid, which pretrained checkpoints
accept unchanged.

For the vote in ``judge()`` the samples differ by test-time views: sample 0 is the clean image,
sample j > 0 a seeded small shift and brightness change (the model is deterministic, so sampling
the same input twice would add nothing).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from reward.config import JudgeConfigError, VLMJudgeConfig
from reward.judge import JUDGE_CONFIG_NAME, SuccessJudge, check_batch, select_frame_indices

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]


class CheckpointError(JudgeConfigError):
    """A judge checkpoint is missing, incomplete or does not match its config."""


# ----------------------------------------------------------------------------- images


def video_to_image(
    video: np.ndarray, frame_stride: int, frames_per_image: int, image_size: int
) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, S, S) float in [0, 1]: the last frames tiled in a square grid."""
    idx = select_frame_indices(len(video), frame_stride, frames_per_image)
    g = math.isqrt(frames_per_image)
    tile = image_size // g
    frames = torch.from_numpy(np.ascontiguousarray(video[idx])).permute(0, 3, 1, 2).float() / 255.0
    if frames.shape[-2:] != (tile, tile):
        # antialias: world-model and camera frames are downsampled 4x or more
        frames = F.interpolate(
            frames, size=(tile, tile), mode="bilinear", antialias=True, align_corners=False
        ).clamp_(0.0, 1.0)
    frames = frames.reshape(g, g, 3, tile, tile)  # (gy, gx, C, h, w)
    return frames.permute(2, 0, 3, 1, 4).reshape(3, g * tile, g * tile)  # (C, S, S)


def shift_images(images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Translate each (3, S, S) image by integer (dx, dy) pixels, filling with the edge pixels."""
    pad = int(max(dx.abs().max().item(), dy.abs().max().item(), 0))
    if pad == 0:
        return images
    s = images.shape[-1]
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")  # (B, 3, S+2p, S+2p)
    out = torch.empty_like(images)
    for i in range(images.shape[0]):
        y0, x0 = pad - int(dy[i]), pad - int(dx[i])
        out[i] = padded[i, :, y0 : y0 + s, x0 : x0 + s]
    return out


def tta_view(images: torch.Tensor, sample: int, shift_px: int, brightness: float) -> torch.Tensor:
    """Sample 0: the images as they are; sample j > 0: a seeded shift and brightness change."""
    if sample == 0:
        return images
    gen = torch.Generator().manual_seed(10_000 + sample)
    b = images.shape[0]
    dx = torch.randint(-shift_px, shift_px + 1, (b,), generator=gen)
    dy = torch.randint(-shift_px, shift_px + 1, (b,), generator=gen)
    gain = 1.0 + (torch.rand(b, generator=gen) * 2 - 1) * brightness
    return (shift_images(images, dx, dy) * gain[:, None, None, None]).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------- tiny build


def tiny_corpus(config: VLMJudgeConfig, instructions: Sequence[str] = ()) -> list[str]:
    from robot_bridge.spec import AUTOEVAL_TASKS, TASKS

    # the AutoEval tasks by default (the tiny judge's vocabulary stays what it was); callers add
    # the instructions of any other task they judge
    texts = sorted(
        {TASKS[t].instruction for t in AUTOEVAL_TASKS}
        | set(config.extra_instructions)
        | set(instructions)
    )
    prompts = [config.prompt_template.format(instruction=t) for t in texts]
    # the answers must become single tokens, so they appear on their own many times
    return prompts + texts + [config.yes_token, config.no_token] * 50


def build_tiny_processor(config: VLMJudgeConfig, instructions: Sequence[str] = ()) -> Any:
    """A byte-level BPE tokenizer trained on the prompts + a SigLIP image processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GemmaTokenizerFast, PaliGemmaProcessor, SiglipImageProcessor

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.tokenizer_vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any text stays encodable
        show_progress=False,
    )
    tok.train_from_iterator(tiny_corpus(config, instructions), trainer)
    fast = GemmaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    image_processor = SiglipImageProcessor(
        size={"height": config.image_size, "width": config.image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        image_seq_length=(config.image_size // config.patch_size) ** 2,
    )
    return PaliGemmaProcessor(image_processor=image_processor, tokenizer=fast)


def build_tiny_model(config: VLMJudgeConfig, tokenizer: Any) -> torch.nn.Module:
    """PaliGemmaForConditionalGeneration with a small SigLIP tower and a small Gemma."""
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        SiglipVisionConfig,
    )

    vision = SiglipVisionConfig(
        hidden_size=config.vision_hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.vision_layers,
        num_attention_heads=config.vision_heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
        vision_use_head=False,  # PaliGemma uses the patch tokens, not SigLIP's pooled head
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<pad>", "<bos>", "<eos>", "<image>")}
    text = GemmaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.text_hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        num_key_value_heads=config.text_heads,
        head_dim=config.text_hidden_size // config.text_heads,
        max_position_embeddings=1024,
        pad_token_id=ids["<pad>"],
        bos_token_id=ids["<bos>"],
        eos_token_id=ids["<eos>"],
    )
    cfg = PaliGemmaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=ids["<image>"],
        vocab_size=len(tokenizer),
        projection_dim=config.text_hidden_size,
        hidden_size=config.text_hidden_size,
        pad_token_id=ids["<pad>"],
    )
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        model = PaliGemmaForConditionalGeneration(cfg)
    return model.to(DTYPES[config.dtype])


# ----------------------------------------------------------------------------- loading


def load_model(path: Path, config: VLMJudgeConfig) -> torch.nn.Module:
    """Load an image-text-to-text model from a local dir; missing or mismatched tensors raise."""
    from transformers import AutoModelForImageTextToText

    if not path.is_dir():
        raise CheckpointError(f"judge checkpoint directory {path} does not exist")
    if not any(path.glob("*.safetensors")):
        raise CheckpointError(
            f"no *.safetensors weights in {path} (pickled weights are never loaded)"
        )
    try:
        model, info = AutoModelForImageTextToText.from_pretrained(
            path,
            local_files_only=True,
            use_safetensors=True,
            output_loading_info=True,
            # report mismatched shapes by name below instead of an anonymous size error
            ignore_mismatched_sizes=True,
            dtype=DTYPES[config.dtype],
        )
    except (RuntimeError, ValueError, OSError) as e:
        raise CheckpointError(f"could not load judge weights from {path}: {e}") from e
    problems = {
        k: list(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        shown = {k: v[:8] for k, v in problems.items()}
        raise CheckpointError(f"judge checkpoint {path} does not match its config.json: {shown}")
    return model


def load_processor(path: Path) -> Any:
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"could not load the processor / tokenizer from {path}: {e}") from e


# ----------------------------------------------------------------------------- judge


class VLMJudge(SuccessJudge):
    """Yes/no VLM judge; see the module docstring for the image and the vote."""

    backend = "vlm"
    has_weights = True  # load_judge(path, device=...) passes the device on

    def __init__(
        self, config: VLMJudgeConfig, model: torch.nn.Module, processor: Any, device: Any = None
    ) -> None:
        from robot_bridge.devices import resolve_device

        self.config = config
        # ``device`` (when given) wins over config.device, which stays the saved setting ("auto"
        # by default), so a judge does not pin the device of the machine it was trained on
        self.device = resolve_device(config.device if device is None else device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self._prefix_cache: dict[str, list[int]] = {}
        self._resolve()

    # construction ---------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls, config: VLMJudgeConfig | None = None, instructions: Sequence[str] = ()
    ) -> VLMJudge:
        """tiny: build locally (tokenizer covers ``instructions``); large: load checkpoint_path."""
        config = config or VLMJudgeConfig()
        if config.preset == "large":
            return cls._load(Path(config.checkpoint_path), config)
        extra = tuple(sorted(set(config.extra_instructions) | set(instructions)))
        config = replace(config, extra_instructions=extra)
        processor = build_tiny_processor(config)
        return cls(config, build_tiny_model(config, processor.tokenizer), processor)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: Any = None, **overrides: Any) -> VLMJudge:
        """Load a saved judge, or a plain local HF checkpoint (then the large preset applies).

        ``device``: where it runs (a ``robot_bridge.devices`` setting; None: the config's)."""
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"judge checkpoint directory {path} does not exist")
        cfg_file = path / JUDGE_CONFIG_NAME
        if cfg_file.is_file():
            payload = json.loads(cfg_file.read_text())
            if payload.get("backend") != cls.backend:
                raise CheckpointError(f"{path} holds a {payload.get('backend')!r} judge, not 'vlm'")
            d = payload["config"]
        else:
            d = {"preset": "large", "checkpoint_path": str(path)}
            size = _processor_image_size(load_processor(path))
            if size is not None and "image_size" not in overrides:
                d["image_size"] = size
        config = VLMJudgeConfig.from_dict({**d, **overrides})
        return cls._load(path, config, device)

    @classmethod
    def _load(cls, path: Path, config: VLMJudgeConfig, device: Any = None) -> VLMJudge:
        model = load_model(path, config)
        return cls(config, model, load_processor(path), device=device)

    def save_pretrained(self, path: str | Path) -> Path:
        """config.json + model.safetensors (HF layout), tokenizer / processor files, judge_config.json."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.processor.save_pretrained(path)
        return super().save_pretrained(path)

    def to(self, device: Any) -> VLMJudge:
        """Move the weights to ``device`` (a torch device or a ``robot_bridge.devices`` setting)."""
        from robot_bridge.devices import resolve_device

        self.device = resolve_device(device)
        self.model.to(self.device)
        return self

    def _resolve(self) -> None:
        cfg, mcfg = self.config, self.model.config
        self.is_paligemma = mcfg.model_type == "paligemma"
        if cfg.input_path == "fast" and not self.is_paligemma:
            raise JudgeConfigError(
                f"input_path 'fast' needs a PaliGemma model, got model_type {mcfg.model_type!r}"
            )
        self.use_fast = cfg.input_path == "fast" or (cfg.input_path == "auto" and self.is_paligemma)
        if self.is_paligemma and mcfg.vision_config.image_size != cfg.image_size:
            raise JudgeConfigError(
                f"the model expects {mcfg.vision_config.image_size} px images but "
                f"config.image_size is {cfg.image_size}"
            )
        proc_size = _processor_image_size(self.processor)
        if proc_size is not None and proc_size != cfg.image_size:
            raise JudgeConfigError(
                f"the processor resizes to {proc_size} px but config.image_size is {cfg.image_size}"
            )
        self.yes_id = self._single_token_id(cfg.yes_token)
        self.no_id = self._single_token_id(cfg.no_token)
        ip = self.processor.image_processor
        self.pixel_mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.pixel_std = torch.tensor(ip.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        if self.is_paligemma:
            self.image_token_id = mcfg.image_token_id
            self.num_image_tokens = mcfg.text_config.num_image_tokens
            cap = getattr(mcfg.text_config, "final_logit_softcapping", None)
            self.softcap = float(cap) if cap else None

    def _single_token_id(self, token: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == self.tokenizer.unk_token_id:
            raise JudgeConfigError(f"answer token {token!r} is not a single token of the tokenizer")
        return int(tid)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # scoring --------------------------------------------------------------------------------

    def images(self, videos: list[np.ndarray], frame_stride: int) -> torch.Tensor:
        """(B, 3, S, S) float in [0, 1], before normalization and augmentation."""
        c = self.config
        return torch.stack(
            [video_to_image(v, frame_stride, c.frames_per_image, c.image_size) for v in videos]
        )

    def yes_no_margin(self, images: torch.Tensor, instructions: list[str]) -> torch.Tensor:
        """(B,) logit(yes) - logit(no); sigmoid of it is P(yes | yes or no). Differentiable."""
        if images.ndim != 4 or images.shape[1:] != (
            3,
            self.config.image_size,
            self.config.image_size,
        ):
            raise ValueError(
                f"images must have shape (B, 3, {self.config.image_size}, {self.config.image_size}), "
                f"got {tuple(images.shape)}"
            )
        if self.use_fast:
            logits = self._fast_logits(images, instructions)
        else:
            logits = self._processor_logits(images, instructions)
        return logits[:, 0] - logits[:, 1]

    def _prefix_ids(self, instruction: str) -> list[int]:
        if instruction not in self._prefix_cache:
            # PaliGemma's prefix: image tokens, <bos>, prompt, "\n" (as its processor builds it)
            prompt = self.config.prompt_template.format(instruction=instruction)
            text_ids = self.tokenizer(
                self.tokenizer.bos_token + prompt + "\n", add_special_tokens=False
            )
            self._prefix_cache[instruction] = [self.image_token_id] * self.num_image_tokens + list(
                text_ids["input_ids"]
            )
        return self._prefix_cache[instruction]

    def _fast_logits(self, images: torch.Tensor, instructions: list[str]) -> torch.Tensor:
        dev = self.device
        ids = [self._prefix_ids(t) for t in instructions]
        b, length = len(ids), max(len(x) for x in ids)
        # Right padding keeps every real token at the same position whatever the batch holds,
        # so a video's score does not depend on its batch mates (PaliGemma ignores the mask
        # when computing positions).
        input_ids = torch.full((b, length), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((b, length), dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        last = mask.sum(1) - 1  # (B,)
        x = images.to(dev)
        pixels = ((x - self.pixel_mean.to(dev)) / self.pixel_std.to(dev)).to(
            DTYPES[self.config.dtype]
        )
        hidden = self.model.model(
            input_ids=input_ids.to(dev), pixel_values=pixels, attention_mask=mask.to(dev)
        ).last_hidden_state  # (B, L, D)
        h_last = hidden[torch.arange(b, device=dev), last.to(dev)]  # (B, D)
        w = self.model.lm_head.weight[[self.yes_id, self.no_id]]  # (2, D)
        logits = (h_last @ w.T).float()  # (B, 2)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def _processor_logits(self, images: torch.Tensor, instructions: list[str]) -> torch.Tensor:
        from PIL import Image

        arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        pils = [Image.fromarray(a) for a in arr]
        texts = [self._processor_text(t) for t in instructions]
        self.tokenizer.padding_side = "right"
        inputs = self.processor(text=texts, images=pils, return_tensors="pt", padding=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(DTYPES[self.config.dtype])
        logits = self.model(**inputs).logits  # (B, L, V)
        mask = inputs["attention_mask"]
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask * positions).argmax(1)  # (B,) index of the last real token
        return logits[torch.arange(len(texts), device=mask.device), last][
            :, [self.yes_id, self.no_id]
        ].float()

    def _processor_text(self, instruction: str) -> str:
        prompt = self.config.prompt_template.format(instruction=instruction)
        if getattr(self.processor, "chat_template", None):
            messages = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
            ]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return prompt  # PaliGemma's processor adds the image tokens, <bos> and "\n" itself

    @torch.inference_mode()
    def _probabilities(self, images: torch.Tensor, instructions: list[str]) -> np.ndarray:
        bs = self.config.inference_batch_size
        out = [
            torch.sigmoid(self.yes_no_margin(images[i : i + bs], instructions[i : i + bs])).cpu()
            for i in range(0, len(instructions), bs)
        ]
        return torch.cat(out).numpy().astype(np.float32)

    def sample_scores(
        self, videos: list[np.ndarray], instructions: list[str], n_samples: int, frame_stride: int
    ) -> np.ndarray:
        check_batch(videos, instructions)
        self.model.eval()
        images = self.images(videos, frame_stride)
        c = self.config
        cols = [
            self._probabilities(
                tta_view(images, j, c.tta_shift_px, c.tta_brightness), list(instructions)
            )
            for j in range(n_samples)
        ]
        return np.stack(cols, axis=1)  # (B, n_samples)

    def success_probability(self, videos: list[np.ndarray], instructions: list[str]) -> np.ndarray:
        """(B,) P(yes) on the clean view; ``judge()`` adds the shifted views for the vote."""
        return self.sample_scores(videos, instructions, 1, self.config.frame_stride)[:, 0]


def _processor_image_size(processor: Any) -> int | None:
    size = getattr(getattr(processor, "image_processor", None), "size", None)
    if isinstance(size, dict) and size.get("height") and size.get("height") == size.get("width"):
        return int(size["height"])
    return None
