"""The VLA policy's one config dataclass and its named presets (``tiny``, ``large``)."""

from __future__ import annotations

from dataclasses import dataclass

from gymnast_common.config import Config
from robot_bridge.spec import ACTION_DIM

QUERY_TOKEN_MODES = ("slots", "pad")
POS_INITS = ("sincos", "random")


PRESETS: dict[str, dict] = {
    "tiny": {},
    # OpenVLA-OFT style: empty (pad) placeholders; the checkpoint decides the architecture.
    "large": {"query_tokens": "pad", "torch_dtype": "bfloat16"},
}


@dataclass
class VLAConfig(Config):
    """Architecture and decoding settings of a :class:`policy.vla.VLAPolicy`.

    ``tiny`` builds a PaliGemma-style model (SigLIP vision tower + Gemma language model) from
    scratch with a BPE tokenizer trained on robot instructions; ``large`` loads an
    OpenVLA/OpenVLA-OFT-style checkpoint from ``model_path`` (a local directory, never the hub).
    """

    PRESETS = PRESETS
    PRESET_FIELD = "preset"

    preset: str = "tiny"
    # Action chunking and discretisation (OpenVLA-OFT: 5 actions x 7 dims, 256 bins, q01/q99).
    chunk_size: int = 5
    action_dim: int = ACTION_DIM
    n_bins: int = 256
    # Rollout sampling temperature (World-Gymnast / SimpleVLA-RL use 1.6).
    temperature: float = 1.6
    # How the chunk_size * action_dim action positions are fed for parallel decoding:
    # "slots": one learned placeholder token per position (``<q_i>``, tiny tokenizer);
    # "pad": the pad token at every position (OpenVLA-OFT feeds empty action embeddings).
    query_tokens: str = "slots"
    # Tiny model (ignored by ``large``).
    image_size: int = 64
    # 16 image tokens at 64 px: ~1.9x the SFT steps/s of patch 8 on CPU at equal batch.
    patch_size: int = 16
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    vision_intermediate: int = 512
    text_hidden: int = 192
    text_layers: int = 2
    text_heads: int = 4
    text_head_dim: int = 48
    text_intermediate: int = 768
    bpe_vocab_size: int = 512
    # "sincos": SigLIP's learnable position embeddings start from a 2-D sine-cosine table;
    # "random": transformers' default initialisation.
    vision_pos_init: str = "sincos"
    init_seed: int = 0
    # Large model.
    model_path: str | None = None
    # Import the model's own code (OpenVLA's auto_map) from model_path. Off unless you turn it on
    # for a model you trust; a station never does, whatever a checkpoint says.
    trust_remote_code: bool = False
    torch_dtype: str = "float32"
    # Which dataset of an OpenVLA / OpenVLA-OFT checkpoint's dataset_statistics.json un-normalises
    # the actions (OpenVLA's unnorm_key, e.g. "bridge_orig"); None: the file must hold exactly one.
    unnorm_key: str | None = None

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {list(PRESETS)}, got {self.preset!r}")
        if self.vision_pos_init not in POS_INITS:
            raise ValueError(
                f"vision_pos_init must be one of {POS_INITS}, got {self.vision_pos_init!r}"
            )
        if self.query_tokens not in QUERY_TOKEN_MODES:
            raise ValueError(
                f"query_tokens must be one of {QUERY_TOKEN_MODES}, got {self.query_tokens!r}"
            )
        for name in ("chunk_size", "action_dim", "n_bins", "image_size", "patch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_bins != 256:
            # The LM head reserves exactly the last 256 vocabulary ids, as OpenVLA does.
            raise ValueError(f"n_bins must be 256 (OpenVLA action vocabulary), got {self.n_bins}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size must be a multiple of patch_size, got {self.image_size} and {self.patch_size}"
            )
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.vision_hidden % self.vision_heads:
            raise ValueError(
                f"vision_hidden ({self.vision_hidden}) must be divisible by vision_heads ({self.vision_heads})"
            )
        if self.preset == "large" and not self.model_path:
            raise ValueError(
                "preset 'large' needs model_path (a local checkpoint directory), got None"
            )
        if self.unnorm_key is not None and (
            not isinstance(self.unnorm_key, str) or not self.unnorm_key
        ):
            raise ValueError(f"unnorm_key must be a dataset name or None, got {self.unnorm_key!r}")
        if self.torch_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(
                f"torch_dtype must be float32, bfloat16 or float16, got {self.torch_dtype!r}"
            )

    @property
    def num_action_tokens(self) -> int:
        return self.chunk_size * self.action_dim

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2
