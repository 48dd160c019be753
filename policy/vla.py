"""The VLA policy: a transformers vision-language model that emits discrete action tokens.

One camera frame and an instruction in, a chunk of ``K`` 7-D Bridge actions out, as in
OpenVLA-OFT: the prompt ``In: What action should the robot take to {instruction}?\\nOut:`` is
followed by ``K * 7`` placeholder tokens, and one forward pass predicts every action token at its
placeholder position (parallel decoding, no autoregression). Each action token is a 256-way choice
over the last 256 vocabulary ids (OpenVLA's bins).

Log-probability convention (what GRPO's ratio needs): for per-position logits ``z`` over the 256
action ids, the policy at temperature ``T`` is ``pi_T = softmax(z / T)``. ``sample`` draws from
``pi_T`` and returns ``log pi_T(token)``; ``log_probs(..., temperature=T)`` recomputes exactly that
(with gradients). Greedy decoding (``temperature=0`` or ``greedy=True``) takes ``argmax z`` and
reports ``log pi_1(token)``. Action ids outside the 256 are never sampled, so the distribution
is over bins only (the rest of the vocabulary is masked out, not renormalised after sampling).

Attention: the tiny PaliGemma attends bidirectionally over the whole input (image, prompt and
placeholders) in training and inference alike (PaliGemma's prefix-LM mask with no suffix), so
the placeholders see each other like OpenVLA-OFT's bidirectional action positions. Left padding
is neutralised with explicit position ids, so a sequence's log-probs do not depend on what else
is in its batch.
"""

from __future__ import annotations

import inspect
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from policy.config import VLAConfig
from policy.oft import action_tokenizer_from_dict
from policy.tokenization import (
    ActionTokenizer,
    build_tiny_processor,
    format_prompt,
    query_token_names,
)
from policy.vla_checkpoint import (  # noqa: F401 (the checkpoint API, re-exported here)
    _OUR_CONFIG_KEYS,
    CONFIG_NAME,
    FORMAT_VERSION,
    GENERATION_CONFIG_NAME,
    LEGACY_FORMAT_VERSION,
    METADATA_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    _check_weights,
    _hf_config,
    _read_json,
    _rename_checkpoint_keys,
    _unique_state_dict,
    checkpoint_action_stats,
    read_checkpoint_config,
)
from robot_bridge.spec import ACTION_HIGH, ACTION_LOW


@dataclass
class PolicySample:
    actions: np.ndarray  # (B, K, 7) float32, raw Bridge units (bin centres)
    tokens: torch.Tensor  # (B, K*7) long vocabulary ids
    logprobs: torch.Tensor  # (B, K*7) float32, log pi_T(token) (see module docstring)


@dataclass
class TokenStats:
    logprobs: torch.Tensor  # (B, N) log pi_T(token), differentiable
    entropy: torch.Tensor  # (B, N) entropy of pi_T per position


def _default_action_stats() -> dict:
    """Bridge action bounds; used only when a policy is built before any data is seen."""
    return {"q01": ACTION_LOW.tolist(), "q99": ACTION_HIGH.tolist()}


def _hf_auto_model():
    from transformers import AutoModelForVision2Seq

    return AutoModelForVision2Seq


def _quiet(fn, *args, **kwargs):
    # AutoModelForVision2Seq is what OpenVLA's auto_map registers; transformers 4.5x warns
    # that it is deprecated, which is noise here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return fn(*args, **kwargs)


def _build_tiny_model(config: VLAConfig, processor) -> nn.Module:
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    tok = processor.tokenizer
    vocab = len(tok)
    hf_config = PaliGemmaConfig(
        vision_config={
            "hidden_size": config.vision_hidden,
            "intermediate_size": config.vision_intermediate,
            "num_hidden_layers": config.vision_layers,
            "num_attention_heads": config.vision_heads,
            "image_size": config.image_size,
            "patch_size": config.patch_size,
            "vision_use_head": False,
        },
        text_config={
            "hidden_size": config.text_hidden,
            "intermediate_size": config.text_intermediate,
            "num_hidden_layers": config.text_layers,
            "num_attention_heads": config.text_heads,
            "num_key_value_heads": 1,
            "head_dim": config.text_head_dim,
            "vocab_size": vocab,
            "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
        },
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vocab_size=vocab,
        projection_dim=config.text_hidden,
        hidden_size=config.text_hidden,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(config.init_seed)
        model = PaliGemmaForConditionalGeneration(hf_config)
    if config.vision_pos_init == "sincos":
        grid = config.image_size // config.patch_size
        table = sincos_2d(grid, config.vision_hidden)  # (grid * grid, vision_hidden)
        with torch.no_grad():
            # Scaled near the spread of the patch embeddings across images, so position does not
            # drown out content after the first LayerNorm.
            model.model.vision_tower.vision_model.embeddings.position_embedding.weight.copy_(
                0.25 * table
            )
    return model


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """(grid * grid, dim) 2-D sine-cosine table (MAE), row-major like SigLIP's patch order.

    A from-scratch ViT with random position embeddings first has to discover where each patch
    is; starting from this table, "where in the image" is linearly readable from step one.
    """
    if dim % 4:
        raise ValueError(f"sincos position table needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 100.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    parts = [
        fn(c.reshape(-1, 1).double() * omega) for c in (ys, xs) for fn in (torch.sin, torch.cos)
    ]
    return torch.cat(parts, dim=1).float()  # (grid * grid, dim)


class VLAPolicy(nn.Module):
    """OpenVLA-style policy around any transformers VLM whose LM head covers the action ids."""

    def __init__(
        self,
        config: VLAConfig,
        model: nn.Module,
        processor,
        action_stats: dict | ActionTokenizer | None = None,
        base_model_path: str | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.model = model
        self.processor = processor
        self.base_model_path = base_model_path
        # How a station decodes this checkpoint (0 = greedy); from_pretrained sets the saved one.
        self.station_temperature: object = 0.0
        tok = processor.tokenizer
        # OpenVLA: the 256 action bins are the last 256 ids of the tokenizer's base vocabulary.
        self.action_token_start = tok.vocab_size - config.n_bins
        out_features = model.get_output_embeddings().weight.shape[0]
        if self.action_token_start < 0 or out_features < tok.vocab_size:
            raise CheckpointError(
                f"LM head has {out_features} outputs but the tokenizer's base vocabulary has "
                f"{tok.vocab_size} ids; need >= {config.n_bins} ids ending inside the LM head"
            )
        self.query_token_ids = self._resolve_query_tokens(tok)
        self.set_action_stats(action_stats if action_stats is not None else _default_action_stats())
        self._prompt_cache: dict[str, list[int]] = {}
        params = inspect.signature(model.forward).parameters
        self._takes_position_ids = "position_ids" in params
        self._takes_logits_to_keep = "logits_to_keep" in params
        ip = processor.image_processor
        # SigLIP-style processors are a plain resize + normalise: done in torch (fast, batched).
        # Anything else (e.g. OpenVLA's fused DINO+SigLIP processor) runs the checkpoint's own.
        self._fast_pixels = type(ip).__name__.startswith("Siglip")
        if self._fast_pixels:
            self.image_size = (int(ip.size["height"]), int(ip.size["width"]))
            self._mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
            self._std = torch.tensor(ip.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        else:
            self.image_size = None

    # ----- construction -----------------------------------------------------------------
    @classmethod
    def build(
        cls, config: VLAConfig | None = None, action_stats: dict | ActionTokenizer | None = None
    ) -> VLAPolicy:
        """A freshly initialised tiny PaliGemma VLA (offline, well under a second)."""
        config = config or VLAConfig.from_preset("tiny")
        if config.preset != "tiny":
            raise ValueError(
                f"build() makes the tiny preset; for preset {config.preset!r} use "
                "VLAPolicy.from_local_path(config.model_path, ...)"
            )
        processor = build_tiny_processor(
            config.image_size,
            config.num_image_tokens,
            config.num_action_tokens,
            config.bpe_vocab_size,
        )
        return cls(config, _build_tiny_model(config, processor), processor, action_stats)

    @classmethod
    def from_local_path(
        cls,
        path: str | Path,
        action_stats: dict | ActionTokenizer | None = None,
        config: VLAConfig | None = None,
    ) -> VLAPolicy:
        """Load a transformers VLM checkpoint (OpenVLA / OpenVLA-OFT style) from a local folder.

        Uses ``AutoProcessor`` / ``AutoModelForVision2Seq`` with ``local_files_only=True`` (and
        ``trust_remote_code`` from the config), so nothing is fetched from a hub.

        Without ``action_stats``, a ``dataset_statistics.json`` in the folder (OpenVLA /
        OpenVLA-OFT) decides what the action tokens mean: the dataset ``config.unnorm_key``
        names (the only one when None), in OpenVLA's bin layout (``policy.oft``). Without either,
        the Bridge bounds.
        """
        from transformers import AutoProcessor

        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"model path {path} is not a directory")
        config = config or VLAConfig.from_preset("large", model_path=str(path))
        if action_stats is None:
            action_stats = checkpoint_action_stats(path, config.unnorm_key)
        processor = AutoProcessor.from_pretrained(
            path, trust_remote_code=config.trust_remote_code, local_files_only=True
        )
        model = _quiet(
            _hf_auto_model().from_pretrained,
            path,
            trust_remote_code=config.trust_remote_code,
            local_files_only=True,
            dtype=getattr(torch, config.torch_dtype),
        )
        return cls(config, model, processor, action_stats, base_model_path=str(path))

    def _resolve_query_tokens(self, tok) -> list[int]:
        n = self.config.num_action_tokens
        if self.config.query_tokens == "pad":
            if tok.pad_token_id is None:
                raise CheckpointError(
                    "query_tokens='pad' needs a tokenizer with a pad token; it has none"
                )
            return [tok.pad_token_id] * n
        names = query_token_names(n)
        ids = tok.convert_tokens_to_ids(names)
        if any(i is None or i == tok.unk_token_id for i in ids):
            raise CheckpointError(
                f"query_tokens='slots' needs tokens {names[0]}..{names[-1]} in the tokenizer "
                f"(chunk_size * action_dim = {n}); use query_tokens='pad' for other checkpoints"
            )
        return list(ids)

    def set_action_stats(self, stats: dict | ActionTokenizer) -> None:
        """Set the q01/q99 action normalisation (changes what every action token means)."""
        if isinstance(stats, ActionTokenizer):
            stats = stats.to_dict()
        self.action_tokenizer = action_tokenizer_from_dict(stats, self.action_token_start)
        if self.action_tokenizer.action_dim != self.config.action_dim:
            raise ValueError(
                f"action stats have {self.action_tokenizer.action_dim} dims, config.action_dim is "
                f"{self.config.action_dim}"
            )

    # ----- persistence ------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, station_temperature: float = 0.0) -> Path:
        """Write a directory that transformers loads as a model, plus our action-head metadata.

        - ``config.json``: the transformers model config (what ``model.config.save_pretrained``
          writes, ``model_type`` "paligemma" for the tiny preset) with one extra key,
          ``"policy_type": "vla"``, which the station's policy registry dispatches on
          (transformers keeps unknown keys as config attributes);
        - ``model.safetensors``: the weights under transformers' own names, tied duplicates
          (``lm_head.weight``) left out as transformers leaves them out;
        - ``generation_config.json`` (when the model has one) and the processor files;
        - ``gymnast_vla.json``: our metadata (format version, ``VLAConfig``, action bins'
          q01/q99 statistics, where the action ids start, the query tokens, station decoding).

        So ``PaliGemmaForConditionalGeneration.from_pretrained(directory)`` (or the Auto classes)
        loads the bare model, and :meth:`from_pretrained` loads the policy.
        ``station_temperature`` is how a station job decodes this checkpoint (0 = greedy).
        """
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {
            k: v.detach().cpu().contiguous() for k, v in _unique_state_dict(self.model).items()
        }
        save_file(tensors, str(d / WEIGHTS_NAME), metadata={"format": "pt"})
        self.processor.save_pretrained(d)
        hf_config = self.model.config.to_dict()
        for key in _OUR_CONFIG_KEYS:
            hf_config.pop(key, None)  # a config loaded from one of our checkpoints carries them
        hf_config["architectures"] = [type(self.model).__name__]
        hf_config["policy_type"] = "vla"
        (d / CONFIG_NAME).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
        generation_config = getattr(self.model, "generation_config", None)
        if generation_config is not None:
            (d / GENERATION_CONFIG_NAME).write_text(generation_config.to_json_string())
        meta = {
            "policy_type": "vla",
            "format_version": FORMAT_VERSION,
            "preset": self.config.preset,
            "config": self.config.to_dict(),
            "action_stats": self.action_tokenizer.to_dict(),
            "action_token_start": self.action_token_start,
            "query_token_ids": self.query_token_ids,
            "model_class": type(self.model).__name__,
            "base_model_path": self.base_model_path,
            "station_temperature": float(station_temperature),
        }
        (d / METADATA_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        return d

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: str | torch.device | None = None,
        *,
        trust_remote_code: bool | None = None,
    ) -> VLAPolicy:
        """Load a directory written by :meth:`save_pretrained` (offline), in either layout
        (format 2, or format 1 with everything in config.json).

        ``device``: a ``robot_bridge.devices`` setting (None: "auto", CUDA when present; a station
        passes its own, CPU by default).

        ``trust_remote_code``: None follows the saved config (off unless the user turned it on
        for their own model); False (what a station passes) never imports code named by the
        checkpoint and never follows its ``base_model_path``.
        """
        from safetensors.torch import load_file
        from transformers import AutoProcessor
        from transformers.modeling_utils import no_init_weights

        from robot_bridge.devices import resolve_device

        device = resolve_device(device)
        d = Path(directory)
        meta = read_checkpoint_config(d)
        config = VLAConfig.from_dict(meta["config"])
        trust = config.trust_remote_code if trust_remote_code is None else trust_remote_code
        # The tiny preset saves a fast (torch) SigLIP image processor; say so, or transformers
        # warns about slow processors.
        fast = {"use_fast": True} if config.preset == "tiny" else {}
        processor = AutoProcessor.from_pretrained(
            d, trust_remote_code=trust, local_files_only=True, **fast
        )
        hf_config = _hf_config(meta, trust)
        # Every tensor is overwritten from the checkpoint below, so skip random initialisation.
        with no_init_weights():
            model = _quiet(
                _hf_auto_model().from_config,
                hf_config,
                trust_remote_code=trust,
                dtype=getattr(torch, config.torch_dtype),
            )
        model.tie_weights()  # skipped along with the initialisation
        weights = d / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"VLA checkpoint {d} has no {WEIGHTS_NAME}")
        # host memory; the model moves once, below
        state = _rename_checkpoint_keys(model, load_file(str(weights)))
        _check_weights(_unique_state_dict(model), state, weights)
        model.load_state_dict(state, strict=False)  # tied duplicates are absent on purpose
        policy = cls(config, model, processor, meta["action_stats"], meta.get("base_model_path"))
        if policy.action_token_start != meta["action_token_start"]:
            raise CheckpointError(
                f"{d}: tokenizer puts action tokens at {policy.action_token_start}, "
                f"{meta['metadata_file']} says {meta['action_token_start']}"
            )
        # Kept as saved; the station parses it (and the environment variable that overrides it).
        policy.station_temperature = meta.get("station_temperature", 0.0)
        return policy.to(device)

    # ----- inputs -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def pixel_values(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) frames -> model pixel values (B, 3, S, S), resized and normalised."""
        images = check_images(images)
        if not self._fast_pixels:
            arrays = [im.cpu().numpy() if torch.is_tensor(im) else im for im in images]
            px = self.processor.image_processor(images=arrays, return_tensors="pt")["pixel_values"]
            return px.to(self.device, self.dtype)
        x = torch.as_tensor(images).to(self.device).permute(0, 3, 1, 2).float()  # (B, 3, H, W)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(
                x, size=self.image_size, mode="bilinear", antialias=True, align_corners=False
            )
        x = (x / 255.0 - self._mean.to(x.device)) / self._std.to(x.device)
        return x.to(self.dtype)

    def prompt_ids(self, instruction: str) -> list[int]:
        """Token ids of the processor's full text input (image tokens, BOS, prompt), cached."""
        if instruction not in self._prompt_cache:
            image_token = getattr(self.processor, "image_token", None)
            text = (image_token or "") + format_prompt(instruction)
            dummy = np.zeros((32, 32, 3), dtype=np.uint8)
            ids = self.processor(text=[text], images=[dummy], return_tensors="pt")["input_ids"][0]
            self._prompt_cache[instruction] = ids.tolist()
        return self._prompt_cache[instruction]

    def text_inputs(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded (B, L) input ids (prompt + placeholders) and attention mask."""
        if isinstance(instructions, str) or not all(isinstance(s, str) for s in instructions):
            raise TypeError(
                f"instructions must be a list of str, got {type(instructions).__name__}"
            )
        seqs = [self.prompt_ids(s) + self.query_token_ids for s in instructions]
        length = max(len(s) for s in seqs)
        pad = self.processor.tokenizer.pad_token_id
        ids = torch.full((len(seqs), length), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, length - len(s) :] = torch.tensor(s)
            mask[i, length - len(s) :] = 1
        return ids.to(self.device), mask.to(self.device)

    # ----- the policy -------------------------------------------------------------------
    def action_logits(
        self, images: np.ndarray | torch.Tensor, instructions: list[str]
    ) -> torch.Tensor:
        """(B, K*7, 256) float32 logits over the action bins, one forward pass."""
        pixel_values = self.pixel_values(images)
        if len(instructions) != pixel_values.shape[0]:
            raise ValueError(
                f"got {pixel_values.shape[0]} images but {len(instructions)} instructions"
            )
        input_ids, attention_mask = self.text_inputs(instructions)
        n = self.config.num_action_tokens
        kwargs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": pixel_values,
        }
        if self._takes_position_ids:
            # Positions count real tokens only, so left padding cannot change a sequence's output.
            kwargs["position_ids"] = attention_mask.cumsum(-1).clamp(min=1)
        if self._takes_logits_to_keep:
            kwargs["logits_to_keep"] = n
        logits = self.model(**kwargs).logits[:, -n:]  # (B, N, V)
        start = self.action_token_start
        return logits[..., start : start + self.config.n_bins].float()  # (B, N, 256)

    def forward(self, images, instructions: list[str]) -> torch.Tensor:
        return self.action_logits(images, instructions)

    @torch.no_grad()
    def sample(
        self,
        images: np.ndarray | torch.Tensor,
        instructions: list[str],
        temperature: float | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> PolicySample:
        """Sample one action chunk per (image, instruction); see the module doc for log-probs."""
        temperature = self.config.temperature if temperature is None else float(temperature)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        logits = self.action_logits(images, instructions)  # (B, N, 256)
        if greedy or temperature == 0:
            logp = F.log_softmax(logits, dim=-1)
            bins = logits.argmax(-1)
        else:
            logp = F.log_softmax(logits / temperature, dim=-1)
            flat = logp.exp().reshape(-1, logp.shape[-1])  # (B*N, 256)
            bins = torch.multinomial(flat, 1, generator=generator).view(logits.shape[:2])
        logprobs = logp.gather(-1, bins.unsqueeze(-1)).squeeze(-1)  # (B, N)
        tokens = bins + self.action_token_start
        actions = self.action_tokenizer.decode(tokens.cpu().numpy())
        return PolicySample(actions=actions, tokens=tokens, logprobs=logprobs)

    def token_stats(
        self,
        images: np.ndarray | torch.Tensor,
        instructions: list[str],
        tokens: torch.Tensor,
        temperature: float | None = None,
    ) -> TokenStats:
        """log pi_T(tokens) and the entropy of pi_T per position, with gradients."""
        temperature = self.config.temperature if temperature is None else float(temperature)
        if temperature <= 0:
            raise ValueError(
                f"log_probs needs the sampling temperature (> 0), got {temperature}; greedy samples "
                "report log-probs at temperature 1.0"
            )
        bins = self._token_bins(tokens)
        logp = F.log_softmax(self.action_logits(images, instructions) / temperature, dim=-1)
        if bins.shape[0] != logp.shape[0]:
            raise ValueError(f"tokens batch {bins.shape[0]} != images batch {logp.shape[0]}")
        logprobs = logp.gather(-1, bins.unsqueeze(-1)).squeeze(-1)  # (B, N)
        entropy = -(logp.exp() * logp).sum(-1)  # (B, N)
        return TokenStats(logprobs=logprobs, entropy=entropy)

    def log_probs(
        self,
        images: np.ndarray | torch.Tensor,
        instructions: list[str],
        tokens: torch.Tensor,
        temperature: float | None = None,
    ) -> torch.Tensor:
        """(B, K*7) log pi_T(tokens) with gradients (the PPO ratio's numerator)."""
        return self.token_stats(images, instructions, tokens, temperature).logprobs

    def _token_bins(self, tokens: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(tokens, device=self.device)
        n = self.config.num_action_tokens
        if t.ndim != 2 or t.shape[1] != n or t.dtype != torch.long:
            raise ValueError(
                f"tokens must be a (B, {n}) long tensor, got {tuple(t.shape)} {t.dtype}"
            )
        bins = t - self.action_token_start
        if bins.min() < 0 or bins.max() >= self.config.n_bins:
            raise ValueError(
                f"tokens must be action ids in [{self.action_token_start}, "
                f"{self.action_token_start + self.config.n_bins}), got [{t.min()}, {t.max()}]"
            )
        return bins

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(
            p.numel() for p in self.model.parameters() if p.requires_grad or not trainable_only
        )


def check_images(images: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Accept only raw camera frames: uint8 (B, H, W, 3), numpy or torch."""
    if not isinstance(images, (np.ndarray, torch.Tensor)):
        raise TypeError(
            f"images must be a numpy array or torch tensor, got {type(images).__name__}"
        )
    shape, dtype = tuple(images.shape), images.dtype
    if dtype not in (np.uint8, torch.uint8) or len(shape) != 4 or shape[-1] != 3:
        hint = (
            " (channels-first input is refused: pass (B, H, W, 3))"
            if len(shape) == 4 and shape[1] == 3
            else ""
        )
        raise ValueError(
            f"images must be uint8 (B, H, W, 3) camera frames, got shape {shape} dtype {dtype}{hint}"
        )
    if shape[0] == 0:
        raise ValueError("images batch is empty")
    return images
