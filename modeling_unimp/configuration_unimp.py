"""UniMPConfig: a vision tower, a causal LM, a perceiver resampler and gated cross-attention (reference §1)."""

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

ITEM_REPRESENTATIONS = ("id", "content", "id+content")  # what an <item_k> token's vectors are made of (issue 12)
ITEM_IMAGE_ENCODERS = ("copy", "shared", "none")  # where the items' image content features come from


class UniMPConfig(PreTrainedConfig):
    r"""Configuration of a UniMP model (OpenFlamingo-style, reference unimp_method.md §1.1-§1.5).

    The vision tower may be any Hugging Face vision encoder (CLIP or SigLIP vision) and the language model
    any causal decoder (Llama, GPT-NeoX, Qwen2, GPT-2); both are built with `AutoModel.from_config`.

    Example:
        >>> config = UniMPConfig.tiny()
        >>> config.cross_attn_layer_ids
        [0, 1]
    """

    model_type = "unimp"
    _auto_class = "AutoConfig"  # saved checkpoints carry this file as remote code
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    # Perceiver resampler (reference §1.2: 6 blocks, 64 latents, 8 heads x 64, FF mult 4).
    perceiver_depth: int = 6
    perceiver_num_latents: int = 64  # latents per image; Flamingo default
    perceiver_num_heads: int = 8
    perceiver_head_dim: int = 64
    perceiver_ff_mult: int = 4
    # Gated cross-attention (reference §1.3: 8 heads x 64, FF mult 4, before every n-th decoder layer).
    cross_attn_every_n_layers: int = 2  # block before 1-based layers 2, 4, ... (the 4B default)
    cross_attn_num_heads: int = 8
    cross_attn_head_dim: int = 64
    cross_attn_ff_mult: int = 4
    gate_init: float = 0.0  # tanh(0) = 0, so an untrained model equals its LM
    # Token ids, filled in by UniMPProcessor.update_model_config (reference §1.5).
    image_token_id: int | None = None
    end_of_chunk_token_id: int | None = None
    answer_token_id: int | None = None
    item_token_start_id: int | None = None  # `<item_0>`; items are one contiguous id range
    num_items: int = 0
    tie_word_embeddings: bool = False  # the paper's GPT-NeoX LM has an untied head
    # Item tokens as content (issue 12). "id": every <item_k> is a free embedding row and head row (the paper);
    # "content": both are learned projections of the item's frozen content features (text + image), so items share
    # statistics and an item added after training gets vectors; "id+content": content plus a free id residual (the
    # item's embedding and head rows, zero at the start).
    item_representation: str = "id"
    item_text_feature_dim: int = 384  # frozen text features per item: all-MiniLM-L6-v2 sentence embeddings
    # the image features' encoder: "copy" a frozen snapshot of the vision tower + perceiver taken when the content is
    # attached (cold-start items are encoded as the catalogue was, while the live tower trains), "shared" the live
    # tower (right when it is frozen, the paper stage), "none" text only
    item_image_encoder: str = "copy"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        text_config = self.text_config
        if getattr(text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True  # SmolLM2-style LMs tie their head; keep that when composing
        for name in (
            "perceiver_depth",
            "perceiver_num_latents",
            "perceiver_num_heads",
            "perceiver_head_dim",
            "cross_attn_every_n_layers",
            "cross_attn_num_heads",
            "cross_attn_head_dim",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"UniMPConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.cross_attn_every_n_layers > text_config.num_hidden_layers:
            raise ValueError(
                f"UniMPConfig.cross_attn_every_n_layers={self.cross_attn_every_n_layers} exceeds the "
                f"{text_config.num_hidden_layers} decoder layers: no cross-attention block would be placed"
            )
        if self.num_items < 0:
            raise ValueError(f"UniMPConfig.num_items must be >= 0, got {self.num_items}")
        if self.item_representation not in ITEM_REPRESENTATIONS:
            raise ValueError(f"UniMPConfig.item_representation must be one of {ITEM_REPRESENTATIONS}, got "
                             f"{self.item_representation!r}")
        if self.item_image_encoder not in ITEM_IMAGE_ENCODERS:
            raise ValueError(f"UniMPConfig.item_image_encoder must be one of {ITEM_IMAGE_ENCODERS}, got "
                             f"{self.item_image_encoder!r}")
        if self.item_text_feature_dim < 1:
            raise ValueError(f"UniMPConfig.item_text_feature_dim must be >= 1, got {self.item_text_feature_dim}")

    @property
    def cross_attn_layer_ids(self) -> list[int]:
        """0-based decoder layers preceded by a gated block: `(idx + 1) % n == 0` (reference §1.3)."""
        n = self.cross_attn_every_n_layers
        return [idx for idx in range(self.text_config.num_hidden_layers) if (idx + 1) % n == 0]

    @property
    def uses_item_content(self) -> bool:
        """Whether `<item_k>` vectors are composed from item content ("content" or "id+content", issue 12)."""
        return self.item_representation != "id"

    @property
    def custom_pipelines(self) -> dict:
        """The saved `custom_pipelines` declaration (written by `Pipeline.save_pretrained` or
        `recipes.train`), as `pipeline()` should see it (issue 15).

        A checkpoint declares "unimp-recommend" so `pipeline(task, model=folder, trust_remote_code=True)` works
        without this package. Where the package itself loaded the config (no `trust_remote_code`), the package has
        registered the pipelines already, so the declaration is hidden from `pipeline()`: the in-library path keeps
        working without `trust_remote_code`. Config files keep it either way (`to_dict` reads `__dict__`).
        """
        declared = self.__dict__.get("custom_pipelines") or {}
        return declared if __name__.startswith("transformers_modules.") else {}

    @custom_pipelines.setter
    def custom_pipelines(self, value: dict) -> None:
        self.__dict__["custom_pipelines"] = value

    @property
    def item_token_ids(self) -> range:
        """The contiguous vocabulary ids of `<item_0>` ... `<item_{num_items-1}>`."""
        if self.item_token_start_id is None:
            return range(0)
        return range(self.item_token_start_id, self.item_token_start_id + self.num_items)

    @classmethod
    def tiny(cls, **kwargs) -> "UniMPConfig":
        """The CPU default: trains on 2 cores in minutes. A 64-px CLIP tower with 16-px patches and a 2-layer
        Llama; sized so a few minutes of training see tens of thousands of item predictions (BENCHMARKS.md)."""
        vision_config = {
            "model_type": "clip_vision_model",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 64,
            "patch_size": 16,
            "projection_dim": 64,
        }
        text_config = {
            "model_type": "llama",
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "vocab_size": 8192,
            "max_position_embeddings": 2048,
            "tie_word_embeddings": False,
        }
        defaults = {
            "perceiver_depth": 1,
            "perceiver_num_latents": 4,
            "perceiver_num_heads": 4,
            "perceiver_head_dim": 16,
            "cross_attn_every_n_layers": 1,
            "cross_attn_num_heads": 4,
            "cross_attn_head_dim": 32,
            "cross_attn_ff_mult": 2,
        }
        defaults.update(kwargs)
        return cls(vision_config=vision_config, text_config=text_config, **defaults)

    @classmethod
    def paper(cls, **kwargs) -> "UniMPConfig":
        """OpenFlamingo-4B, the paper's default (reference §1.1 `4b-instruct`).

        CLIP ViT-L/14 at 224 px, RedPajama-INCITE-3B (GPT-NeoX, 32 layers, d=2560), cross-attention before
        every 2nd layer, a 6-block perceiver with 64 latents per image.
        """
        vision_config = {
            "model_type": "clip_vision_model",
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 224,
            "patch_size": 14,
            "projection_dim": 768,
            "hidden_act": "quick_gelu",
        }
        text_config = {  # togethercomputer/RedPajama-INCITE-Instruct-3B-v1 config.json
            "model_type": "gpt_neox",
            "hidden_size": 2560,
            "intermediate_size": 10240,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "vocab_size": 50432,
            "max_position_embeddings": 2048,
            "rotary_pct": 1.0,
            "use_parallel_residual": False,
            "layer_norm_eps": 1e-5,
            "tie_word_embeddings": False,
        }
        return cls(vision_config=vision_config, text_config=text_config, **kwargs)


__all__ = ["ITEM_IMAGE_ENCODERS", "ITEM_REPRESENTATIONS", "UniMPConfig"]
