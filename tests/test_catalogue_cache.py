"""modeling_unimp/catalogue_cache.py: the fast exact scoring path ranks as the collator path does (issue 13)."""

import copy

import pytest
import torch
from conftest import make_tiny_config
from PIL import Image

from modeling_unimp import UniMPForConditionalGeneration, UniMPImageCache, UniMPProcessor, score_prompts
from modeling_unimp.catalogue_cache import weights_fingerprint
from processing import UniMPDataCollator

NUM_ITEMS = 14
# float32 forward of a 2-layer model whose logits are O(1): batch composition and padding side reorder sums only
ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture
def catalogue(tiny_tokenizer):
    processor = UniMPProcessor.from_catalogue(copy.deepcopy(tiny_tokenizer), [f"m{k}" for k in range(NUM_ITEMS)],
                                              image_size=32)
    model = UniMPForConditionalGeneration(make_tiny_config()).eval()
    processor.prepare_model(model)
    with torch.no_grad():  # open the gates, so that the images change the scores
        for name, parameter in model.named_parameters():
            if name.endswith("gate"):
                parameter.fill_(1.0)
    return model, processor


def _prompts(tmp_path, count: int) -> list[dict]:
    path = tmp_path / "poster.png"
    Image.new("RGB", (48, 40), (200, 30, 90)).save(path)
    pictures = [Image.new("RGB", (32, 32), (37 * k % 256, 90, 20 * k % 256)) for k in range(NUM_ITEMS)]
    prompts = []
    for n in range(count):  # histories of 1..count items: different lengths, so padding matters
        items = [(n + k) % NUM_ITEMS for k in range(n + 1)]
        images = [str(path) if k % 4 == 0 else None if k % 4 == 1 else pictures[k] for k in items]
        text = "".join(f"<answer> <item_{k}> <image> Title Heat <|endofchunk|> " for k in items)
        prompts.append({"text": text + "What next? <answer>", "images": images})
    return prompts


def test_fast_scores_equal_the_collator_path_with_the_same_top_10(catalogue, tmp_path):
    model, processor = catalogue
    prompts = _prompts(tmp_path, 5)
    slow = model.score_items(**UniMPDataCollator(processor, for_generation=True)(prompts))  # left padding, pixels
    fast = score_prompts(model, processor, prompts, batch_size=2)  # sorted, right padded, cached latents
    torch.testing.assert_close(fast, slow, atol=ATOL, rtol=RTOL)
    top = slow.topk(10, dim=-1)
    gaps = -top.values.diff(dim=-1)
    assert (gaps > 10 * ATOL).all(), "near-ties in the reference ranking: the comparison would say nothing"
    assert torch.equal(fast.topk(10, dim=-1).indices, top.indices)
    assert not torch.allclose(slow[0], slow[1])  # rows are their own users' scores


def test_images_change_the_fast_scores(catalogue, tmp_path):
    model, processor = catalogue
    prompts = _prompts(tmp_path, 3)
    blank = [{"text": p["text"], "images": [None] * len(p["images"])} for p in prompts]
    assert not torch.allclose(score_prompts(model, processor, prompts), score_prompts(model, processor, blank))


def test_latents_are_recomputed_when_the_vision_weights_change(catalogue):
    model, processor = catalogue
    cache = UniMPImageCache(processor)
    image = Image.new("RGB", (32, 32), "blue")
    before, present = cache.image_hidden_states(model, [image])
    assert present.tolist() == [True]
    with torch.no_grad():  # `.data` edits bypass the version counter: the sums in the key still see them
        model.model.vision_model.embeddings.patch_embedding.weight.data.mul_(1.5)
    after, _ = cache.image_hidden_states(model, [image])
    fresh, _ = UniMPImageCache(processor).image_hidden_states(model, [image])
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fresh, atol=0.0, rtol=0.0)


def test_cached_pixel_tensors_give_the_processor_batch_of_the_images(catalogue, tmp_path):
    _, processor = catalogue
    prompts = _prompts(tmp_path, 3)
    texts, images = [p["text"] for p in prompts], [p["images"] for p in prompts]
    cache = UniMPImageCache(processor)
    as_tensors = [[cache.pixel_values([image])[0][0] if image is not None else None for image in row]
                  for row in images]
    reference, cached = processor(text=texts, images=images), processor(text=texts, images=as_tensors)
    assert torch.equal(cached["pixel_values"], reference["pixel_values"])
    assert torch.equal(cached["image_attention_mask"], reference["image_attention_mask"])
    assert reference["pixel_values"].abs().sum() > 0
    masks_only = processor(text=texts, images=images, return_pixel_values=False)
    assert "pixel_values" not in masks_only
    assert torch.equal(masks_only["image_attention_mask"], reference["image_attention_mask"])


def test_a_tensor_image_of_the_wrong_size_is_refused(catalogue):
    _, processor = catalogue
    with pytest.raises(ValueError, match=r"prompt 0 image 0: .*shape \(3, 32, 32\)"):
        processor(text=["<image> Heat"], images=[[torch.zeros(3, 16, 16)]])


def test_right_padded_scores_equal_left_padded_scores(catalogue, tmp_path):
    model, processor = catalogue
    prompts = _prompts(tmp_path, 4)
    texts, images = [p["text"] for p in prompts], [p["images"] for p in prompts]
    left = model.score_items(**processor(text=texts, images=images, padding_side="left"))
    right = model.score_items(**processor(text=texts, images=images, padding_side="right"))
    torch.testing.assert_close(right, left, atol=ATOL, rtol=RTOL)
    batch = processor(text=texts, images=images, padding_side="right")
    batch["attention_mask"][0, 0] = 0  # a hole: neither left nor right padding
    with pytest.raises(ValueError, match="padded on one side only"):
        model.score_items(**batch)


def test_docstring_example_runs():
    import doctest

    from modeling_unimp import catalogue_cache

    result = doctest.testmod(catalogue_cache, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_an_edited_image_file_is_preprocessed_again_and_uncached_images_stay_apart(catalogue, tmp_path):
    import io
    import os

    _, processor = catalogue
    cache = UniMPImageCache(processor, max_entries=8)
    path = tmp_path / "poster.png"
    Image.new("RGB", (32, 32), "red").save(path)
    red = cache.pixel_values([str(path)])[0]
    Image.new("RGB", (32, 40), "green").save(path)  # same path, new content (and size)
    os.utime(path, ns=(1, 10**18))
    green = cache.pixel_values([str(path)])[0]
    assert not torch.equal(red, green)
    encoded = []
    for color in ("red", "blue"):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), color).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    pixels, present = cache.pixel_values(encoded)  # bytes are not cached: each keeps its own pixels
    assert present.tolist() == [True, True] and not torch.equal(pixels[0], pixels[1])


def test_weights_fingerprint_sees_every_kind_of_weight_edit():
    """Optimizer steps and in-place ops move the version counter, `.data = ...` the pointer, `.data.mul_` the sum;
    an unchanged module keeps its key, and a permutation through `.data` (unseen by design) is what `clear()` is for."""
    module = torch.nn.Linear(4, 3)
    key = weights_fingerprint(module)
    assert weights_fingerprint(module) == key
    with torch.no_grad():
        module.weight.add_(0.0)  # same values, new version: a recomputation, never a stale value
    assert weights_fingerprint(module) != key
    key = weights_fingerprint(module)
    module.weight.data.mul_(1.5)
    assert weights_fingerprint(module) != key
    key = weights_fingerprint(module)
    module.bias.data = module.bias.data.clone() + 1.0
    assert weights_fingerprint(module) != key
    key = weights_fingerprint(module)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    module(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    assert weights_fingerprint(module) != key


def test_clear_forgets_latents_after_an_unseen_edit(catalogue):
    model, processor = catalogue
    cache = UniMPImageCache(processor)
    image = Image.new("RGB", (32, 32), "green")
    before, _ = cache.image_hidden_states(model, [image])
    weight = model.model.perceiver.latents  # (L, E)
    weight.data.copy_(weight.data.flip(0))  # a permutation: same sum, same version counter
    try:
        stale, _ = cache.image_hidden_states(model, [image])
        cache.clear()
        fresh, _ = cache.image_hidden_states(model, [image])
        torch.testing.assert_close(fresh, UniMPImageCache(processor).image_hidden_states(model, [image])[0])
        assert torch.equal(stale, before) and not torch.allclose(fresh, before)
    finally:
        weight.data.copy_(weight.data.flip(0))  # the module-scoped model as it was
