"""Catalogue image cache: each image preprocessed once, and encoded once per model weights (issue 13).

Checkpoint file (the pipeline uses it): imports torch, numpy, PIL and same-folder modules only.
"""

import hashlib
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

ENCODE_CHUNK = 256  # images per vision-tower call when filling the latent cache (bounded activation memory)


def weights_fingerprint(*modules: torch.nn.Module) -> str:
    """A key of the current weights of `modules`: per parameter and buffer its name, storage pointer, version
    counter, shape, dtype, device and the sum of its values.

    Cheap on purpose (issue 13: a byte hash cost 1.2 s per 67 M parameters on every pipeline call; the sums cost
    ~0.05 s): optimizer steps, `load_state_dict`, in-place ops under `no_grad` and `param.data = ...` move the
    version counter or the pointer, and `param.data.mul_(...)`-style edits, which bypass the version counter, move
    the sum. An edit through `.data` that keeps every tensor's sum exactly (a permutation of its values) is not
    seen: call `UniMPImageCache.clear()` / `model.clear_item_vectors()` after one. A key that changes without a
    weight change (a sum reduced with another thread count) only costs a recomputation, never a stale value.
    """
    entries = []
    with torch.no_grad():
        for module in modules:
            for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
                total = tensor.sum(dtype=torch.float32) if tensor.is_floating_point() else tensor.sum()
                entries.append((name, tensor.data_ptr(), tensor._version, tuple(tensor.shape), str(tensor.dtype),
                                str(tensor.device), total.item()))
    return hashlib.blake2b(repr(entries).encode(), digest_size=16).hexdigest()


def _source_key(image, cache_objects: bool = True):
    """The cache key of an image reference: a file's path with its modification time and size (an edited file is a
    new key), a PIL image's id (the cache keeps the image, so the id is never reused while cached); None for
    references that are not cached (bytes, dicts, files that cannot be read, PIL images when not `cache_objects`)."""
    if isinstance(image, (str, os.PathLike)):
        try:
            stat = os.stat(image)
        except OSError:
            return None
        return ("path", os.fspath(image), stat.st_mtime_ns, stat.st_size)
    if isinstance(image, Image.Image) and cache_objects:
        return ("pil", id(image))
    return None


def _unimp_model(model):
    """The `UniMPModel` (vision tower, perceiver) inside a model, its PEFT wrapper included."""
    if hasattr(model, "get_base_model"):  # a peft.PeftModel
        model = model.get_base_model()
    inner = getattr(model, "model", None)
    return inner if inner is not None and hasattr(inner, "vision_model") else model


class UniMPImageCache:
    r"""Pixel values of each image reference computed once, and perceiver latents computed once per model weights.

    `pixel_values` gives exactly what `UniMPProcessor` computes for an image (it calls the processor's own
    `preprocess_images`), so a batch built from cached pixels equals one built from the images. `image_hidden_states`
    runs the vision tower and perceiver on images not yet encoded with the model's current weights: the cache is
    keyed by `weights_fingerprint` of the vision tower and perceiver and emptied when they change, so it is never
    stale, also while training updates the tower between evaluations.

    Example:
        >>> from modeling_unimp import UniMPConfig, UniMPForConditionalGeneration, UniMPProcessor
        >>> from modeling_unimp import train_catalogue_tokenizer
        >>> tokenizer = train_catalogue_tokenizer(["Heat Up"], vocab_size=300)
        >>> processor = UniMPProcessor.from_catalogue(tokenizer, ["m1"], ["Heat"], image_size=64)
        >>> cache = UniMPImageCache(processor)
        >>> red = Image.new("RGB", (80, 60), "red")
        >>> tuple(cache.pixel_values([red, None, red])[0].shape), cache.pixel_values([red, None])[1].tolist()
        ((3, 3, 64, 64), [True, False])
        >>> model = UniMPForConditionalGeneration(UniMPConfig.tiny()).eval()
        >>> tuple(cache.image_hidden_states(model, [red])[0].shape)  # (n, L, E)
        (1, 4, 64)
    """

    def __init__(self, processor, *, cache_objects: bool = True, max_entries: int | None = None):
        """Args:
            processor: the `UniMPProcessor` whose image processor defines the pixels.
            cache_objects: also cache PIL images by identity (recipes: their `ImageCache` returns one object per
                file); False caches files only (a long-lived pipeline fed fresh PIL images by its users).
            max_entries: forget the oldest images beyond this many (None: keep all; a catalogue is finite).
        """
        self.processor = processor
        self.cache_objects, self.max_entries = cache_objects, max_entries
        self._pixels: dict = {}  # key -> (3, H, W) float tensor, or None when the image does not decode
        self._objects: dict = {}  # key -> the PIL image, kept alive so that its id stays unique
        self._latents: dict = {}  # key -> (L, E) for the weights of `_latents_key`
        self._latents_key: str | None = None

    def clear(self) -> None:
        """Forget every encoded latent (pixels stay: they do not depend on the weights). Needed only after an edit
        that `weights_fingerprint` cannot see (a `.data` permutation)."""
        self._latents, self._latents_key = {}, None

    def _key(self, image):
        return _source_key(image, self.cache_objects)

    def _remember(self, table: dict, key, value, image) -> None:
        table[key] = value
        if key[0] == "pil":
            self._objects[key] = image
        if self.max_entries is not None:
            while len(table) > self.max_entries:
                oldest = next(iter(table))
                del table[oldest]
                if oldest not in self._pixels and oldest not in self._latents:
                    self._objects.pop(oldest, None)

    def __len__(self) -> int:
        return len(self._pixels)

    def _lookup(self, table: dict, images: Sequence) -> tuple[list, dict, dict]:
        """Per image its key (("once", id) when not cacheable), the values already in `table`, the missing images."""
        keys = [None if image is None else self._key(image) or ("once", id(image)) for image in images]
        known = {key: table[key] for key in keys if key is not None and key in table}
        missing = {key: image for key, image in zip(keys, images) if key is not None and key not in known}
        return keys, known, missing

    def _store(self, table: dict, missing: dict, values: list) -> dict:
        for (key, image), value in zip(missing.items(), values):
            if key[0] != "once":
                self._remember(table, key, value, image)
        return dict(zip(missing, values))

    def pixel_values(self, images: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 3, H, W) pixel values and an (n,) bool `present` mask (False: None or not decodable, zeros there)."""
        keys, values, missing = self._lookup(self._pixels, images)
        if missing:
            pixels, decoded = self.processor.preprocess_images(list(missing.values()))
            values.update(self._store(self._pixels, missing,
                                      [pixels[n] if decoded[n] else None for n in range(len(missing))]))
        size = self.processor.image_processor.size
        out = torch.zeros(len(images), 3, size["height"], size["width"])
        present = torch.zeros(len(images), dtype=torch.bool)
        for n, key in enumerate(keys):
            if key is not None and values[key] is not None:
                out[n], present[n] = values[key], True
        return out, present

    @torch.inference_mode()
    def image_hidden_states(self, model, images: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, L, E) perceiver latents of `images` under `model`'s current weights, and the (n,) `present` mask.

        Args:
            model: a `UniMPForConditionalGeneration` (or its `UniMPModel`).
            images: image references (paths, PIL images, None).
        Returns: latents on the model's device (the key holds the device: a moved model encodes again), the mask
            on the CPU.
        """
        base = _unimp_model(model)
        fingerprint = weights_fingerprint(base.vision_model, base.perceiver)
        if fingerprint != self._latents_key:
            self._latents, self._latents_key = {}, fingerprint
        shape = (base.config.perceiver_num_latents, base.config.vision_config.hidden_size)
        device = base.perceiver.latents.device
        keys, values, missing = self._lookup(self._latents, images)
        if missing:
            pixels, present = self.pixel_values(list(missing.values()))
            rows = present.nonzero().flatten()
            latents = torch.zeros(len(missing), *shape, dtype=base.dtype, device=device)
            for start in range(0, len(rows), ENCODE_CHUNK):
                chunk = rows[start : start + ENCODE_CHUNK]
                latents[chunk] = base.get_image_features(pixels[chunk].unsqueeze(1).to(device))  # (c, L, E)
            values.update(self._store(self._latents, missing,
                                      [latents[n] if present[n] else None for n in range(len(missing))]))
        out = torch.zeros(len(images), *shape, dtype=base.dtype, device=device)
        present = torch.zeros(len(images), dtype=torch.bool)
        for n, key in enumerate(keys):
            if key is not None and values[key] is not None:
                out[n], present[n] = values[key], True
        return out, present


def gather_image_hidden_states(cache: UniMPImageCache, model, images: list[list]) -> dict[str, torch.Tensor]:
    """Per-prompt image lists -> `image_hidden_states` (B, N·L, E) from the cache and the (B, N) `present` mask.

    Zeros fill padded or image-less slots; the processor's `image_attention_mask` already hides them. The latents
    are on the model's device, the mask on the CPU.
    """
    flat = [image for row in images for image in row]
    latents, present = cache.image_hidden_states(model, flat)  # (n, L, E)
    batch_size, max_images = len(images), max((len(row) for row in images), default=0)
    num_latents, dim = latents.shape[1], latents.shape[2]
    out = torch.zeros(batch_size, max_images, num_latents, dim, dtype=latents.dtype, device=latents.device)
    slots = torch.zeros(batch_size, max_images, dtype=torch.bool)
    lengths = np.array([len(row) for row in images])
    rows = torch.from_numpy(np.repeat(np.arange(batch_size), lengths))
    columns = torch.from_numpy(np.concatenate([np.arange(n) for n in lengths]) if len(flat) else np.zeros(0, int))
    out[rows.to(out.device), columns.to(out.device)] = latents
    slots[rows, columns] = present
    return {"image_hidden_states": out.flatten(1, 2), "present": slots}


def latent_batch(model, processor, cache: UniMPImageCache, texts: list[str], images: list[list]) -> dict:
    """A right-padded batch of prompts with their images as cached perceiver latents (`image_hidden_states`, each
    image encoded once per vision weights) instead of pixels: what `score_items` needs, without the vision tower.

    A prompt longer than the model's positions loses its oldest items, and their images, in the processor; the
    latents follow the images its text kept. Undecodable images are masked out of `image_attention_mask`.
    """
    batch = dict(processor(text=texts, images=images, padding_side="right", return_pixel_values=False))
    counts = (batch["input_ids"] == processor.image_token_id).sum(dim=-1).tolist()
    images = [list(row[len(row) - count :]) for row, count in zip(images, counts)]
    encoded = gather_image_hidden_states(cache, model, images)
    batch["image_attention_mask"] = batch["image_attention_mask"] & encoded["present"].unsqueeze(1)
    batch["image_hidden_states"] = encoded["image_hidden_states"]
    return batch


def iter_prompt_scores(model, processor, prompts: Sequence[dict], *, cache: UniMPImageCache | None = None,
                       batch_size: int = 64, progress=None) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Exact full-catalogue scores of evaluation prompts (ending at `<answer>`), one batch at a time: `score_items`
    on right-padded batches of similar length, images as cached perceiver latents (each catalogue image encoded once
    per weights). Only one (batch, num_items) block is alive at a time, so a caller that keeps what it needs per
    batch (ranks, a top-k) evaluates in O(batch x num_items) memory instead of O(prompts x num_items) (issue 13).

    Args:
        model: a `UniMPForConditionalGeneration` with the processor's catalogue.
        processor: its `UniMPProcessor`.
        prompts: n dicts with `text` and `images` (`render_record` / `processor.render_prompt` output).
        cache: the image cache to use (and fill); a fresh one when None.
        batch_size: prompts per forward pass.
        progress: optional wrapper of the batch iterator (e.g. `tqdm`).
    Yields: `(rows, scores)`: the indices into `prompts` of one batch (sorted by prompt length, not in `prompts`'
        order) and their (len(rows), num_items) float32 item logits, row for row.
    """
    cache = cache if cache is not None else UniMPImageCache(processor)
    model.eval()
    # prompts of similar length share a batch: little padding (the rows say where each score row belongs)
    order = sorted(range(len(prompts)), key=lambda n: len(prompts[n]["text"]))
    batches = range(0, len(order), batch_size)
    for start in progress(batches) if progress is not None else batches:
        rows = order[start : start + batch_size]
        texts, images = [prompts[n]["text"] for n in rows], [list(prompts[n]["images"]) for n in rows]
        with torch.inference_mode():  # not around the generator: a caller's work between batches is its own
            batch = latent_batch(model, processor, cache, texts, images)
            scores = model.score_items(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                       image_hidden_states=batch["image_hidden_states"],
                                       image_attention_mask=batch["image_attention_mask"]).float()
        yield rows, scores


@torch.inference_mode()
def score_prompts(model, processor, prompts: Sequence[dict], *, cache: UniMPImageCache | None = None,
                  batch_size: int = 64, progress=None) -> torch.Tensor:
    """All of `iter_prompt_scores` in one (n, num_items) float32 matrix, in the order of `prompts`.

    Holds n x num_items floats (4 MB per prompt at 1M items): to rank or take a top-k, iterate `iter_prompt_scores`
    and keep only those (`recipes.evaluate.evaluate_recommendation` does).
    """
    scores = torch.empty(len(prompts), processor.num_items)
    for rows, block in iter_prompt_scores(model, processor, prompts, cache=cache, batch_size=batch_size,
                                          progress=progress):
        scores[rows] = block
    return scores


__all__ = ["UniMPImageCache", "gather_image_hidden_states", "iter_prompt_scores", "latent_batch", "score_prompts",
           "weights_fingerprint"]
