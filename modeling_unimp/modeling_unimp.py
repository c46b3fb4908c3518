"""UniMP: vision tower -> perceiver resampler -> tanh-gated cross-attention inside a causal LM (reference §1).

Shape letters (STYLE.md §3): B batch, T text tokens, N images per sample, L latents per image, P patches,
D text hidden size, E vision hidden size, V vocabulary.
"""

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils import ModelOutput

from .catalogue_cache import weights_fingerprint
from .configuration_unimp import UniMPConfig

IGNORE_INDEX = -100  # `labels` value of unsupervised tokens: what transformers' loss functions skip


@dataclass
class UniMPModelOutputWithPast(BaseModelOutputWithPast):
    """`last_hidden_state` (B, T, D) plus `image_hidden_states` (B, N·L, E), reused by generation."""

    image_hidden_states: torch.FloatTensor | None = None


@dataclass
class UniMPCausalLMOutputWithPast(ModelOutput):
    """`logits` (B, T, V); `loss` is the mean next-token cross-entropy when `labels` are given."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_hidden_states: torch.FloatTensor | None = None


class UniMPFeedForward(nn.Sequential):
    """LayerNorm -> Linear(d, mult·d, no bias) -> GELU -> Linear(mult·d, d, no bias) (OpenFlamingo FF)."""

    def __init__(self, dim: int, mult: int):
        super().__init__(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim * mult, bias=False),
            nn.GELU(),
            nn.Linear(dim * mult, dim, bias=False),
        )


class UniMPPerceiverAttention(nn.Module):
    """Latents attend to concat(image features, latents) (reference §1.2)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.image_norm = nn.LayerNorm(dim)
        self.latents_norm = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, num_heads * head_dim, bias=False)
        self.kv_proj = nn.Linear(dim, 2 * num_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, dim, bias=False)

    def forward(self, image_features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Args: image_features (b, P, E), latents (b, L, E). Returns (b, L, E)."""
        latents = self.latents_norm(latents)
        keys_values_input = torch.cat([self.image_norm(image_features), latents], dim=1)  # (b, P+L, E)
        query = _split_heads(self.q_proj(latents), self.num_heads)
        key, value = (_split_heads(x, self.num_heads) for x in self.kv_proj(keys_values_input).chunk(2, dim=-1))
        attended = F.scaled_dot_product_attention(query, key, value)  # (b, heads, L, head_dim)
        return self.o_proj(_merge_heads(attended))


class UniMPPerceiverLayer(nn.Module):
    def __init__(self, config: UniMPConfig):
        super().__init__()
        dim = config.vision_config.hidden_size
        self.attention = UniMPPerceiverAttention(dim, config.perceiver_num_heads, config.perceiver_head_dim)
        self.feed_forward = UniMPFeedForward(dim, config.perceiver_ff_mult)

    def forward(self, image_features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = latents + self.attention(image_features, latents)
        return latents + self.feed_forward(latents)


class UniMPPerceiverResampler(nn.Module):
    """Resamples each image's P patch features to L learned latents; no media-time embedding (§1.2)."""

    def __init__(self, config: UniMPConfig):
        super().__init__()
        dim = config.vision_config.hidden_size
        self.latents = nn.Parameter(torch.randn(config.perceiver_num_latents, dim))
        self.layers = nn.ModuleList(UniMPPerceiverLayer(config) for _ in range(config.perceiver_depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """Args: image_features (b, P, E) for b images. Returns (b, L, E)."""
        latents = self.latents.unsqueeze(0).expand(image_features.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(image_features, latents)
        return self.norm(latents)


class UniMPGatedCrossAttentionBlock(nn.Module):
    """x + tanh(α_attn)·MaskedCrossAttn(LN(x), images), then x + tanh(α_ff)·FF(x) (reference §1.3)."""

    def __init__(self, config: UniMPConfig):
        super().__init__()
        text_dim = config.text_config.hidden_size
        image_dim = config.vision_config.hidden_size
        self.num_heads, self.head_dim = config.cross_attn_num_heads, config.cross_attn_head_dim
        inner_dim = self.num_heads * self.head_dim
        self.norm = nn.LayerNorm(text_dim)
        self.q_proj = nn.Linear(text_dim, inner_dim, bias=False)
        self.kv_proj = nn.Linear(image_dim, 2 * inner_dim, bias=False)
        self.o_proj = nn.Linear(inner_dim, text_dim, bias=False)
        self.attn_gate = nn.Parameter(torch.full((1,), float(config.gate_init)))
        self.feed_forward = UniMPFeedForward(text_dim, config.cross_attn_ff_mult)
        self.ff_gate = nn.Parameter(torch.full((1,), float(config.gate_init)))

    def forward(
        self,
        hidden_states: torch.Tensor,
        image_hidden_states: torch.Tensor | None,
        image_attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Args:
            hidden_states: (B, T, D) text hidden states entering the decoder layer.
            image_hidden_states: (B, N·L, E) perceiver output, or None when the batch has no image.
            image_attention_mask: (B, T, N·L) bool, True where token t may attend to that latent.
        Returns: (B, T, D).
        """
        if image_hidden_states is not None and image_hidden_states.shape[1] > 0:
            query = _split_heads(self.q_proj(self.norm(hidden_states)), self.num_heads)
            key, value = (_split_heads(x, self.num_heads) for x in self.kv_proj(image_hidden_states).chunk(2, -1))
            # finfo.min rather than -inf: sdpa returns NaN for fully masked rows (hf_stack_notes §8); those
            # rows (text before the first image, image-less items) are zeroed below instead (reference §1.4.4).
            bias = torch.zeros(image_attention_mask.shape, dtype=query.dtype, device=query.device)
            bias = bias.masked_fill(~image_attention_mask, torch.finfo(query.dtype).min).unsqueeze(1)
            attended = _merge_heads(F.scaled_dot_product_attention(query, key, value, attn_mask=bias))
            sees_an_image = image_attention_mask.any(dim=-1, keepdim=True).to(attended.dtype)  # (B, T, 1)
            hidden_states = hidden_states + torch.tanh(self.attn_gate) * self.o_proj(attended) * sees_an_image
        return hidden_states + torch.tanh(self.ff_gate) * self.feed_forward(hidden_states)


def encode_images(vision_model: nn.Module, perceiver: nn.Module, config: UniMPConfig,
                  pixel_values: torch.Tensor) -> torch.Tensor:
    """Vision tower (patch tokens, no CLS, reference §1.2) -> perceiver: (B, N, C, H, W) -> (B, N·L, E)."""
    batch_size, num_images = pixel_values.shape[:2]
    flat = pixel_values.flatten(0, 1).to(vision_model.dtype)  # (B·N, C, H, W)
    patch_features = vision_model(pixel_values=flat).last_hidden_state  # (B·N, prefix + P, E)
    num_patches = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    latents = perceiver(patch_features[:, -num_patches:])  # (B·N, L, E)
    return latents.reshape(batch_size, num_images * latents.shape[1], latents.shape[2])


class UniMPItemImageEncoder(nn.Module):
    """The frozen snapshot of the vision tower + perceiver that encodes items' images into content features
    (`item_image_encoder="copy"`, issue 12): cold-start items are encoded exactly as the catalogue was, while the
    live tower keeps training. Never called in `forward`: its output is stored as `UniMPItemContentEncoder` buffers."""

    def __init__(self, config: UniMPConfig):
        super().__init__()
        self.config = config
        self.vision_model = AutoModel.from_config(config.vision_config)
        self.perceiver = UniMPPerceiverResampler(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.perceiver.latents.dtype

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Args: pixel_values (B, N, C, H, W). Returns: (B, N·L, E) perceiver latents."""
        return encode_images(self.vision_model, self.perceiver, self.config, pixel_values)


class UniMPItemContentEncoder(nn.Module):
    r"""Item content -> the input embedding and the output (scoring) vector of every `<item_k>` (issue 12).

    Per item k, with frozen content features as buffers (saved with the checkpoint, so a content model loads and
    ranks offline): `text_features[k]` (Ft) the item text's sentence embedding, `image_features[k]` (E) its pooled
    perceiver latents, and the flags `has_text[k]`, `has_image[k]`. A missing modality contributes a learned
    "missing" vector instead:
        text_k = W_t t_k if has_text[k] else u_t;   image_k = W_v v_k if has_image[k] else u_v
        z_k = LN(GELU(text_k + image_k));   input_k = P_in z_k,  output_k = P_out z_k   (D each)
    One pass over the catalogue gives every item's vectors, so ranking stays exact over the whole catalogue.
    """

    def __init__(self, config: UniMPConfig):
        super().__init__()
        dim = config.text_config.hidden_size
        num_items, image_dim = config.num_items, config.vision_config.hidden_size
        self.register_buffer("text_features", torch.zeros(num_items, config.item_text_feature_dim))
        self.register_buffer("image_features", torch.zeros(num_items, image_dim))
        self.register_buffer("has_text", torch.zeros(num_items, dtype=torch.bool))
        self.register_buffer("has_image", torch.zeros(num_items, dtype=torch.bool))
        self.text_proj = nn.Linear(config.item_text_feature_dim, dim)
        self.image_proj = nn.Linear(image_dim, dim)
        self.missing_text = nn.Parameter(torch.zeros(dim))
        self.missing_image = nn.Parameter(torch.zeros(dim))
        self.norm = nn.LayerNorm(dim)
        self.input_proj = nn.Linear(dim, dim, bias=False)
        self.output_proj = nn.Linear(dim, dim, bias=False)

    @property
    def num_items(self) -> int:
        return self.text_features.shape[0]

    def set_content(self, text_features: torch.Tensor, has_text: torch.Tensor, image_features: torch.Tensor,
                    has_image: torch.Tensor) -> None:
        """Replace the content buffers: (n, Ft), (n,), (n, E), (n,) for the n catalogue items."""
        num_items = text_features.shape[0]
        shapes = {"text_features": (num_items, self.text_features.shape[1]), "has_text": (num_items,),
                  "image_features": (num_items, self.image_features.shape[1]), "has_image": (num_items,)}
        given = {"text_features": text_features, "has_text": has_text, "image_features": image_features,
                 "has_image": has_image}
        for name, value in given.items():
            if tuple(value.shape) != shapes[name]:
                raise ValueError(f"item content `{name}` has shape {tuple(value.shape)}, expected {shapes[name]} "
                                 f"(one row per catalogue item; UniMPConfig.item_text_feature_dim / the vision "
                                 "hidden size for the feature width)")
            old = getattr(self, name)
            setattr(self, name, value.detach().to(device=old.device, dtype=old.dtype).clone())

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns: the (n, D) input embeddings and the (n, D) output vectors of the n catalogue items."""
        text = torch.where(self.has_text.unsqueeze(-1), self.text_proj(self.text_features), self.missing_text)
        image = torch.where(self.has_image.unsqueeze(-1), self.image_proj(self.image_features), self.missing_image)
        hidden = self.norm(F.gelu(text + image))  # (n, D)
        return self.input_proj(hidden), self.output_proj(hidden)


@dataclass
class _ImageContext:
    """What the decoder-layer pre-hooks need, passed as a forward kwarg (no state kept on layers)."""

    blocks: dict[int, UniMPGatedCrossAttentionBlock]
    image_hidden_states: torch.Tensor | None
    latent_attention_mask: torch.Tensor | None  # (B, T, N·L) bool


_CONTEXT_KWARG = "unimp_image_context"


def _cross_attend_before_layer(layer_index: int, layer: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook on every decoder layer: pops the image context and, where a gated block sits in front
    of this layer, runs it on the layer's input hidden states. The stock LM forward passes unknown kwargs down
    to its layers, so this works for Llama, Qwen2, GPT-NeoX and GPT-2 alike without copying their loops."""
    context = kwargs.pop(_CONTEXT_KWARG, None)
    if context is None:
        return None
    block = context.blocks.get(layer_index)
    if block is not None:
        if args:
            args = (block(args[0], context.image_hidden_states, context.latent_attention_mask), *args[1:])
        else:
            kwargs["hidden_states"] = block(
                kwargs["hidden_states"], context.image_hidden_states, context.latent_attention_mask
            )
    return args, kwargs


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(b, s, heads·head_dim) -> (b, heads, s, head_dim)."""
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(b, heads, s, head_dim) -> (b, s, heads·head_dim)."""
    return x.transpose(1, 2).flatten(2)


def _decoder_layers(language_model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of any HF causal decoder (`layers` for Llama/Qwen2/GPT-NeoX, `h` for GPT-2)."""
    num_layers = language_model.config.num_hidden_layers
    for name in ("layers", "h", "blocks"):
        layers = getattr(language_model, name, None)
        if isinstance(layers, nn.ModuleList) and len(layers) == num_layers:
            return layers
    raise ValueError(f"cannot find the {num_layers} decoder layers of {type(language_model).__name__}")


def _check_item_content(encoder: UniMPItemContentEncoder, config: UniMPConfig) -> None:
    if encoder.num_items != config.num_items:
        raise ValueError(f"the item content covers {encoder.num_items} items but config.num_items is "
                         f"{config.num_items}: "
                         "attach the catalogue's content (modeling_unimp.item_content_unimp.attach_item_content) after "
                         "processor.prepare_model, or add items with add_catalogue_items")


def build_image_attention_mask(input_ids: torch.Tensor, image_token_id: int, num_images: int) -> torch.Tensor:
    """Token t uses image n iff n is its most recent `<image>` (reference §1.4: text_time = cumsum of `<image>`).

    Args:
        input_ids: (B, T).
        image_token_id: id of `<image>`; the `<image>` token itself already belongs to its own image.
        num_images: N, the image slots of the batch.
    Returns: (B, T, N) bool; all False before the first `<image>`.
    """
    image_index = (input_ids == image_token_id).cumsum(dim=-1) - 1  # (B, T), -1 before the first image
    return image_index.unsqueeze(-1) == torch.arange(num_images, device=input_ids.device)


class UniMPPreTrainedModel(PreTrainedModel):
    config_class = UniMPConfig
    _auto_class = "AutoModelForImageTextToText"  # save_pretrained copies this file and writes an auto_map
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["UniMPGatedCrossAttentionBlock", "UniMPPerceiverLayer"]
    _skip_keys_device_placement = ["past_key_values"]

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, with an `auto_map` that also serves `AutoModel` and
        `AutoModelForCausalLM`, so `trust_remote_code=True` works where the package is not installed."""
        target = f"modeling_unimp.{UniMPForConditionalGeneration.__name__}"
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoConfig": "configuration_unimp.UniMPConfig",
            "AutoModel": target,
            "AutoModelForCausalLM": target,
            "AutoModelForImageTextToText": target,
        }
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, but a checkpoint that lacks weights is a `ValueError` naming them.

        transformers would initialise the missing tensors at random and only print a load report: a checkpoint
        whose `lm_head.weight` was lost then ranks items at random. Where the config ties the head to the input
        embeddings (`tie_word_embeddings`), the head is not stored and is re-tied, which is correct; an untied head
        cannot be recovered. Pass `output_loading_info=True` to get `(model, loading_info)` and decide yourself.
        """
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        missing = sorted(info.get("missing_keys") or ())
        if missing and not wants_info:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ValueError(f"{pretrained_model_name_or_path}: the checkpoint lacks {len(missing)} weight tensor(s) "
                             f"({shown}); they would be random. Re-save the checkpoint, or pass "
                             "output_loading_info=True to load it anyway and inspect what is missing")
        return (model, info) if wants_info else model

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, UniMPGatedCrossAttentionBlock):
            init.constant_(module.attn_gate, self.config.gate_init)
            init.constant_(module.ff_gate, self.config.gate_init)
        elif isinstance(module, UniMPPerceiverResampler):
            init.normal_(module.latents)  # OpenFlamingo: torch.randn latents
        elif isinstance(module, UniMPItemContentEncoder):
            init.zeros_(module.missing_text)
            init.zeros_(module.missing_image)
            # z is unit-scale after its LayerNorm: std/sqrt(D) gives item vectors the scale of token embeddings
            std = getattr(self.config.get_text_config(), "initializer_range", 0.02)
            std /= module.input_proj.in_features ** 0.5
            init.normal_(module.input_proj.weight, std=std)
            init.normal_(module.output_proj.weight, std=std)


class UniMPModel(UniMPPreTrainedModel):
    """Vision tower + perceiver + a stock causal decoder with gated cross-attention blocks in front of every
    `cross_attn_every_n_layers`-th layer. Returns hidden states; `UniMPForConditionalGeneration` adds the head."""

    def __init__(self, config: UniMPConfig):
        super().__init__(config)
        self.vision_model = AutoModel.from_config(config.vision_config)
        self.perceiver = UniMPPerceiverResampler(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.gated_cross_attn = nn.ModuleList(
            UniMPGatedCrossAttentionBlock(config) for _ in config.cross_attn_layer_ids
        )
        for layer_index, layer in enumerate(_decoder_layers(self.language_model)):
            layer.register_forward_pre_hook(partial(_cross_attend_before_layer, layer_index), with_kwargs=True)
        if config.uses_item_content:  # issue 12: <item_k> vectors from the item's content
            self.item_encoder = UniMPItemContentEncoder(config)
            if config.item_image_encoder == "copy":
                self.item_image_encoder = UniMPItemImageEncoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode every image once.

        Args: pixel_values (B, N, C, H, W).
        Returns: (B, N·L, E) perceiver latents.
        """
        return encode_images(self.vision_model, self.perceiver, self.config, pixel_values)

    @property
    def item_image_features_encoder(self) -> nn.Module | None:
        """What encodes items' images into content features: the frozen copy, the live tower, or None (text only)."""
        source = self.config.item_image_encoder if self.config.uses_item_content else "none"
        return {"copy": getattr(self, "item_image_encoder", None), "shared": self, "none": None}[source]

    def embed_with_items(self, input_ids: torch.Tensor, item_input_embeddings: torch.Tensor) -> torch.Tensor:
        """Token embeddings where every `<item_k>` takes its content vector (plus its own row under "id+content").

        Args: input_ids (B, T); item_input_embeddings (num_items, D).
        Returns: (B, T, D).
        """
        embeddings = self.get_input_embeddings()(input_ids)  # (B, T, D)
        offset = input_ids - self.config.item_token_start_id
        is_item = ((offset >= 0) & (offset < item_input_embeddings.shape[0])).unsqueeze(-1)  # (B, T, 1)
        content = item_input_embeddings.to(embeddings.dtype)[offset.clamp(0, item_input_embeddings.shape[0] - 1)]
        if self.config.item_representation == "id+content":  # the item's embedding row is the id residual
            return embeddings + content * is_item
        return torch.where(is_item, content, embeddings)

    def _resolve_image_attention_mask(
        self, input_ids: torch.Tensor | None, image_attention_mask: torch.Tensor | None, num_images: int
    ) -> torch.Tensor:
        if image_attention_mask is not None:
            if image_attention_mask.shape[-1] != num_images:
                raise ValueError(
                    f"image_attention_mask has {image_attention_mask.shape[-1]} image slots but there are "
                    f"{num_images} images; pass the mask that UniMPProcessor returns with these pixel_values"
                )
            return image_attention_mask.bool()
        if input_ids is None or self.config.image_token_id is None:
            raise ValueError("pass image_attention_mask (or input_ids and config.image_token_id) with the images")
        num_image_tokens = (input_ids == self.config.image_token_id).sum(dim=-1)
        for row, count in enumerate(num_image_tokens.tolist()):
            if count != num_images:
                raise ValueError(
                    f"row {row} has {count} <image> tokens but {num_images} images; pass one image per "
                    f"<image> token (or the image_attention_mask from UniMPProcessor for padded image batches)"
                )
        return build_image_attention_mask(input_ids, self.config.image_token_id, num_images)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_hidden_states: torch.FloatTensor | None = None,
        image_attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        item_input_embeddings: torch.Tensor | None = None,
        **kwargs,
    ) -> UniMPModelOutputWithPast:
        """Args:
            input_ids, attention_mask: (B, T).
            pixel_values: (B, N, C, H, W), images in prompt order, zero-padded to the batch's max N.
            image_hidden_states: (B, N·L, E), already-encoded images (generation after prefill).
            image_attention_mask: (B, T, N), True where token t uses image n; built from the `<image>`
                positions when omitted (then every row must hold exactly N `<image>` tokens).
            item_input_embeddings: (num_items, D), the items' content input vectors (content models; computed
                from `item_encoder` when omitted).
        Returns: `UniMPModelOutputWithPast` with `last_hidden_state` (B, T, D) and `image_hidden_states`.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        language_input_ids = input_ids
        if self.config.uses_item_content and input_ids is not None and self.config.num_items:
            if item_input_embeddings is None:
                _check_item_content(self.item_encoder, self.config)
                item_input_embeddings = self.item_encoder()[0]
            inputs_embeds, language_input_ids = self.embed_with_items(input_ids, item_input_embeddings), None
        if image_hidden_states is None and pixel_values is not None and pixel_values.shape[1] > 0:
            image_hidden_states = self.get_image_features(pixel_values)
        latent_attention_mask = None
        if image_hidden_states is not None:
            num_images = image_hidden_states.shape[1] // self.config.perceiver_num_latents
            image_attention_mask = self._resolve_image_attention_mask(input_ids, image_attention_mask, num_images)
            # (B, T, N) -> (B, T, N·L): a token sees all L latents of its own image and nothing else (§1.4).
            latent_attention_mask = image_attention_mask.repeat_interleave(self.config.perceiver_num_latents, dim=-1)
        context = _ImageContext(
            blocks=dict(zip(self.config.cross_attn_layer_ids, self.gated_cross_attn)),
            image_hidden_states=image_hidden_states,
            latent_attention_mask=latent_attention_mask,
        )
        outputs = self.language_model(
            input_ids=language_input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            **{_CONTEXT_KWARG: context},
            **kwargs,
        )
        return UniMPModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_hidden_states,
        )


class UniMPForConditionalGeneration(UniMPPreTrainedModel, GenerationMixin):
    """UniMP with a language-modelling head: every task is next-token prediction (reference §2-§4)."""

    # Tied only when config.tie_word_embeddings (SmolLM2-style LMs); the regex covers every supported LM.
    _tied_weights_keys = {"lm_head.weight": r"model\.language_model\.(embed_tokens|embed_in|wte)\.weight"}

    def __init__(self, config: UniMPConfig):
        super().__init__(config)
        self.model = UniMPModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self._item_vectors_memo: tuple | None = None  # (weights key, vectors): see item_vectors
        self.post_init()

    def item_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The content input embeddings and output vectors of every catalogue item, (num_items, D) each (issue 12).

        Under gradients they are recomputed (they train); without gradients (evaluation, pipelines, generation) they
        are computed once per weights: the memo is keyed by `catalogue_cache.weights_fingerprint` of the encoder's
        parameters and buffers (version counters, pointers and sums: it also sees `param.data` edits); after an
        edit it cannot see, call `clear_item_vectors()`.
        """
        if not self.config.uses_item_content:
            raise ValueError("item_vectors needs item_representation 'content' or 'id+content'")
        encoder = self.model.item_encoder
        _check_item_content(encoder, self.config)
        if torch.is_grad_enabled():
            return encoder()
        key = (weights_fingerprint(encoder), str(encoder.text_features.device))
        if self._item_vectors_memo is None or self._item_vectors_memo[0] != key:
            self._item_vectors_memo = (key, encoder())
        return self._item_vectors_memo[1]

    def clear_item_vectors(self) -> None:
        """Forget the memo of `item_vectors` (the next no-grad call recomputes them)."""
        self._item_vectors_memo = None

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of=None, mean_resizing=True):
        """Resize input embeddings and head; keeps the text config's vocab_size in sync (the head reads it)."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.config.text_config.vocab_size = embeddings.num_embeddings
        return embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_hidden_states: torch.FloatTensor | None = None,
        image_attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> UniMPCausalLMOutputWithPast:
        """Same inputs as `UniMPModel.forward`, plus `labels` (B, T) with -100 where unsupervised.

        `logits_to_keep` is an int (the last k positions), a 1-D index tensor of positions, or a (B, T) bool mask
        selecting (row, token) pairs; the mask returns logits of shape (n, V) (the trainer's answer positions).

        `**kwargs` stays in the signature so that `Trainer` passes `num_items_in_batch` (STYLE.md §4).
        Returns: `UniMPCausalLMOutputWithPast` with `logits` (B, T, V).
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        item_vectors = None
        if self.config.uses_item_content and self.config.num_items:
            item_vectors = self.item_vectors()
            kwargs["item_input_embeddings"] = item_vectors[0]
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            pixel_values=pixel_values,
            image_hidden_states=image_hidden_states,
            image_attention_mask=image_attention_mask,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.dtype == torch.bool:
            hidden_states = hidden_states[logits_to_keep]  # (n, D): only the selected (row, token) pairs
        else:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            hidden_states = hidden_states[:, keep, :]
        logits = self.lm_head(hidden_states)
        if item_vectors is not None:
            logits = self._with_item_content_logits(logits, hidden_states, item_vectors[1])
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits,
                labels=labels,
                vocab_size=logits.shape[-1],
                num_items_in_batch=num_items_in_batch,
            )
        return UniMPCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
        )

    def _with_item_content_logits(self, logits: torch.Tensor, hidden_states: torch.Tensor,
                                  item_output_vectors: torch.Tensor) -> torch.Tensor:
        """(..., V) logits whose item slice scores the items' content vectors (plus the head rows, the id residual,
        under "id+content"); hidden_states (..., D), item_output_vectors (num_items, D)."""
        start, num_items = self.config.item_token_start_id, self.config.num_items
        content = hidden_states @ item_output_vectors.to(hidden_states.dtype).T  # (..., num_items)
        if self.config.item_representation == "id+content":
            content = logits[..., start : start + num_items] + content
        return torch.cat([logits[..., :start], content.to(logits.dtype), logits[..., start + num_items :]], dim=-1)

    def item_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The scores of every catalogue item from next-token logits: (..., V) -> (..., num_items).

        An item is one token, so one forward pass ranks the whole catalogue exactly (issue 5).
        """
        if self.config.item_token_start_id is None or self.config.num_items == 0:
            raise ValueError("config.item_token_start_id/num_items are unset: build the processor's catalogue first")
        start = self.config.item_token_start_id
        return logits[..., start : start + self.config.num_items]

    @torch.no_grad()
    def score_items(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **inputs
    ) -> torch.Tensor:
        """Exact full-catalogue scores at the end of padded prompts that stop right after `<answer>`.

        Right padding is the fast form (issue 13): padding after a prompt never reaches its tokens under causal
        attention, so the batch runs without an attention mask (the causal sdpa kernel, no (B, 1, T, T) mask) and
        the scores are read at each row's last real token. Left padding masks the padding instead.

        Args: the processor's batch for prompts ending in `<answer>`, left or right padded.
        Returns: (B, num_items) item-token logits.
        """
        if attention_mask is not None and not attention_mask[:, -1].all():
            if not torch.equal(attention_mask.cumprod(dim=-1), attention_mask):  # ones then zeros, per row
                raise ValueError("score_items needs prompts ending at <answer>, padded on one side only (the "
                                 "processor's padding_side='left' or 'right')")
            last = torch.zeros_like(attention_mask, dtype=torch.bool)
            last[torch.arange(last.shape[0]), attention_mask.sum(dim=-1) - 1] = True  # (B, T): one True per row
            outputs = self(input_ids=input_ids, attention_mask=None, logits_to_keep=last, use_cache=False, **inputs)
            return self.item_logits(outputs.logits)  # (B, V) -> (B, num_items)
        outputs = self(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, use_cache=False, **inputs)
        return self.item_logits(outputs.logits[:, -1])

    @torch.no_grad()
    def generate(self, inputs=None, generation_config=None, **kwargs):
        """`GenerationMixin.generate`; builds `image_attention_mask` from the prompt when it is omitted, so the
        generated tokens keep attending to the prompt's last image (reference §1.4.7)."""
        input_ids = kwargs.get("input_ids", inputs)
        pixel_values = kwargs.get("pixel_values")
        if pixel_values is not None and kwargs.get("image_attention_mask") is None and input_ids is not None:
            kwargs["image_attention_mask"] = self.model._resolve_image_attention_mask(
                input_ids, None, pixel_values.shape[1]
            )
        return super().generate(inputs, generation_config, **kwargs)

    def prepare_inputs_for_generation(
        self,
        input_ids,
        past_key_values=None,
        attention_mask=None,
        inputs_embeds=None,
        pixel_values=None,
        image_hidden_states=None,
        image_attention_mask=None,
        is_first_iteration=False,
        **kwargs,
    ):
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        if image_hidden_states is not None:  # images were encoded at prefill: reuse them (§1.4.7)
            model_inputs["image_hidden_states"] = image_hidden_states
            model_inputs.pop("pixel_values", None)
        else:
            model_inputs["pixel_values"] = pixel_values
        if image_attention_mask is not None:
            num_tokens = model_inputs["input_ids"].shape[1] if model_inputs.get("input_ids") is not None else (
                model_inputs["inputs_embeds"].shape[1]
            )
            missing = num_tokens - image_attention_mask.shape[1]
            if missing > 0:  # generated tokens belong to the prompt's last image (§1.4.7)
                image_attention_mask = torch.cat(
                    [image_attention_mask, image_attention_mask[:, -1:].expand(-1, missing, -1)], dim=1
                )
            model_inputs["image_attention_mask"] = image_attention_mask[:, -num_tokens:]
        return model_inputs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, **kwargs):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder, **kwargs)
        mask = model_kwargs.get("image_attention_mask")
        if mask is not None:
            model_kwargs["image_attention_mask"] = torch.cat([mask, mask[:, -1:]], dim=1)
        model_kwargs["image_hidden_states"] = outputs.image_hidden_states
        return model_kwargs

    @classmethod
    def from_vision_text_pretrained(
        cls,
        vision_model_name_or_path: str | None,
        text_model_name_or_path: str,
        *,
        config: UniMPConfig | None = None,
        vision_kwargs: dict | None = None,
        text_kwargs: dict | None = None,
        **config_kwargs,
    ) -> "UniMPForConditionalGeneration":
        """Compose a UniMP from a pretrained vision tower and a pretrained causal LM (a GGUF file included).

        Args:
            vision_model_name_or_path: a folder or Hub id of a vision encoder (CLIP, SigLIP; a full CLIP
                checkpoint contributes its vision tower), or None to keep `config.vision_config` at random init.
            text_model_name_or_path: a folder or Hub id of a causal LM.
            config: a `UniMPConfig` whose perceiver/cross-attention fields to use (default `UniMPConfig()`).
            vision_kwargs, text_kwargs: passed to the respective `from_pretrained`, e.g.
                `text_kwargs={"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}`.
            config_kwargs: UniMPConfig fields overriding `config`.
        Returns: a model whose perceiver and gated blocks are freshly initialised (gates at `gate_init`).
        """
        text_lm = AutoModelForCausalLM.from_pretrained(text_model_name_or_path, **(text_kwargs or {}))
        vision_tower = None
        if vision_model_name_or_path is not None:
            vision_tower = AutoModel.from_pretrained(vision_model_name_or_path, **(vision_kwargs or {}))
            vision_tower = getattr(vision_tower, "vision_model", vision_tower) if hasattr(
                vision_tower, "text_model"
            ) else vision_tower
        base = (config or UniMPConfig()).to_dict()
        base.update(config_kwargs)
        base["text_config"] = text_lm.config.to_dict()
        if vision_tower is not None:
            base["vision_config"] = vision_tower.config.to_dict()
        for key in ("model_type", "transformers_version", "architectures"):
            base.pop(key, None)
        model = cls(UniMPConfig(**base))
        text_base = text_lm.get_decoder() if hasattr(text_lm, "get_decoder") else text_lm.base_model
        model.model.language_model.load_state_dict(text_base.state_dict())
        model.lm_head.weight.data.copy_(text_lm.get_output_embeddings().weight.data)
        if vision_tower is not None:
            target = model.model.vision_model
            source_state = vision_tower.state_dict()
            if not any(k.startswith("vision_model.") for k in source_state) and hasattr(target, "vision_model"):
                target = target.vision_model
            target.load_state_dict(source_state)
        model.tie_weights()
        return model


__all__ = [
    "IGNORE_INDEX",
    "UniMPPerceiverResampler",
    "UniMPGatedCrossAttentionBlock",
    "UniMPItemContentEncoder",
    "UniMPItemImageEncoder",
    "UniMPPreTrainedModel",
    "UniMPModel",
    "UniMPForConditionalGeneration",
    "UniMPModelOutputWithPast",
    "UniMPCausalLMOutputWithPast",
    "build_image_attention_mask",
]
