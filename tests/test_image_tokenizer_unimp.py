"""The UniMP image tokenizer (VQ autoencoder, spec §2.2 (vi)) and its recipe; its metrics: test_image_metrics.py."""

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from modeling_unimp.image_tokenizer_unimp import UniMPImageTokenizer, UniMPImageTokenizerConfig

# 16-px images, two halvings -> a 4 x 4 grid of 16 codes from a 16-entry codebook.
TINY = dict(
    resolution=16, base_channels=8, channel_multipliers=(1, 2, 2), norm_num_groups=4, codebook_size=16, code_dim=8
)


@pytest.fixture(autouse=True)
def _single_torch_thread():
    """One intra-op thread: on the shared 2-core machine, 2 threads run these convs up to 10x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_tokenizer(**overrides) -> UniMPImageTokenizer:
    return UniMPImageTokenizer(UniMPImageTokenizerConfig(**{**TINY, **overrides}))


def make_synthetic_images(count: int = 8, size: int = 16) -> torch.Tensor:
    """(count, 3, size, size) in [-1, 1]: a different colour per quadrant and image, so codes must vary."""
    generator = torch.Generator().manual_seed(0)
    colours = torch.rand(count, 4, 3, generator=generator) * 2 - 1
    images = torch.empty(count, 3, size, size)
    half = size // 2
    for quadrant, (row, column) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        block = colours[:, quadrant, :, None, None]
        images[:, :, row * half : (row + 1) * half, column * half : (column + 1) * half] = block
    return images


def train_steps(model: UniMPImageTokenizer, images: torch.Tensor, steps: int) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(images).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# --- config -------------------------------------------------------------------------------------------


def test_config_derives_code_grid():
    config = UniMPImageTokenizerConfig()
    assert (config.resolution, config.downsample_factor, config.grid_size, config.num_image_codes) == (64, 8, 8, 64)
    tiny = UniMPImageTokenizerConfig(**TINY)
    assert (tiny.grid_size, tiny.num_image_codes) == (4, 16)


@pytest.mark.parametrize(
    ("overrides", "field_name"),
    [
        ({"resolution": 0}, "resolution"),
        ({"resolution": 18}, "resolution"),  # not divisible by 2 ** 2
        ({"codebook_size": 1}, "codebook_size"),
        ({"code_dim": 0}, "code_dim"),
        ({"channel_multipliers": ()}, "channel_multipliers"),
        ({"norm_num_groups": 3}, "norm_num_groups"),
        ({"commitment_beta": -0.1}, "commitment_beta"),
        ({"codebook_ema_decay": 1.0}, "codebook_ema_decay"),
        ({"codebook_restart_threshold": -1.0}, "codebook_restart_threshold"),
        ({"reconstruction_l1_weight": 0.0, "reconstruction_l2_weight": 0.0}, "reconstruction_l1_weight"),
    ],
)
def test_config_rejects_invalid_field_naming_it(overrides, field_name):
    with pytest.raises(ValueError, match=field_name):
        UniMPImageTokenizerConfig(**{**TINY, **overrides})


# --- encode / decode ----------------------------------------------------------------------------------


@pytest.mark.parametrize("use_ema_codebook", [True, False])
@pytest.mark.parametrize(
    ("resolution", "channel_multipliers", "num_codes"), [(16, (1, 2, 2), 16), (32, (1, 2, 2, 2), 16), (16, (1, 2), 64)]
)
def test_encode_decode_shapes_and_code_range(use_ema_codebook, resolution, channel_multipliers, num_codes):
    model = make_tokenizer(
        resolution=resolution, channel_multipliers=channel_multipliers, use_ema_codebook=use_ema_codebook
    ).eval()
    pixel_values = torch.rand(2, 3, resolution, resolution) * 2 - 1
    codes = model.encode(pixel_values)
    assert codes.shape == (2, num_codes) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < model.config.codebook_size
    assert model.decode(codes).shape == (2, 3, resolution, resolution)


def test_eval_forward_matches_encode_then_decode():
    model = make_tokenizer()
    train_steps(model, make_synthetic_images(), steps=2)
    model.eval()
    pixel_values = make_synthetic_images(4)
    with torch.no_grad():
        output = model(pixel_values)
    assert torch.equal(output.codes, model.encode(pixel_values))
    torch.testing.assert_close(output.reconstruction, model.decode(output.codes))
    assert output.loss.ndim == 0 and 0 < output.codebook_usage <= 1 and output.perplexity >= 1


def test_wrong_pixel_shape_or_codes_raise_value_error():
    model = make_tokenizer().eval()
    with pytest.raises(ValueError, match="pixel_values must have shape"):
        model.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="codes must lie in"):
        model.decode(torch.full((1, 16), 16))
    with pytest.raises(ValueError, match="codes must have shape"):
        model.decode(torch.zeros(1, 15, dtype=torch.long))


def test_eval_forward_leaves_codebook_statistics_unchanged():
    model = make_tokenizer()
    images = make_synthetic_images()
    train_steps(model, images, steps=1)
    before = {name: buffer.clone() for name, buffer in model.quantizer.named_buffers()}
    model.eval()
    model(images)
    model.encode(images)
    for name, buffer in model.quantizer.named_buffers():
        assert torch.equal(buffer, before[name]), name
    model.train()
    model(images)
    assert not torch.equal(model.quantizer.cluster_size, before["cluster_size"])


# --- training -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_ema_codebook", [True, False])
def test_training_steps_reduce_loss_and_use_several_codes(use_ema_codebook):
    model = make_tokenizer(use_ema_codebook=use_ema_codebook)
    images = make_synthetic_images()
    losses = train_steps(model, images, steps=30)
    assert losses[-1] < 0.5 * losses[0]
    codes = model.eval().encode(images)
    assert codes.unique().numel() > 1


def test_dead_codes_restart_from_encoder_outputs():
    model = make_tokenizer(codebook_size=64)
    assert torch.all(model.quantizer.cluster_size == 0)  # every code starts dead
    model.train()
    images = make_synthetic_images()
    model(images)
    # after one step every code was either used or re-seeded, so none is below the threshold
    assert torch.all(model.quantizer.cluster_size >= model.config.codebook_restart_threshold - 1e-6)
    latents = model.encoder(images).permute(0, 2, 3, 1).reshape(-1, model.config.code_dim)
    distance = torch.cdist(model.quantizer.codebook, latents).min(dim=1).values  # (K,)
    assert distance.max() < 0.1  # each code sits on (or EMA-near) an encoder output of the batch


# --- text tokens --------------------------------------------------------------------------------------


def test_codes_to_string_and_back():
    model = make_tokenizer()
    codes = torch.arange(16).flip(0)
    text = model.codes_to_string(codes)
    assert text.startswith("<img_15> <img_14> ") and text.endswith(" <img_0>")
    assert len(text.split(" ")) == 16
    assert torch.equal(model.string_to_codes(text), codes)
    assert torch.equal(model.string_to_codes(text.replace(" ", "")), codes)  # decoded added tokens may touch
    assert model.code_token(7) == "<img_7>"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<img_1> " * 15 + "<img_x>", "<img_x>"),
        ("<img_1> " * 15 + "item_3", "item_3"),
        ("<img_1> " * 15 + "<img_16>", "<img_16>"),  # codebook_size is 16
        ("<img_1> " * 15 + "<img_01>", "<img_01>"),
        ("<img_1> " * 15, "incomplete image code grid: got 15 tokens, expected 16"),
        ("<img_1> " * 17, "got 17 tokens"),
        ("", "got 0 tokens"),
    ],
)
def test_string_to_codes_rejects_invalid_or_incomplete_grids(text, message):
    with pytest.raises(ValueError, match=message):
        make_tokenizer().string_to_codes(text)


def test_codes_to_string_rejects_out_of_range_codes():
    with pytest.raises(ValueError, match="codes must lie in"):
        make_tokenizer().codes_to_string([16] * 16)


# --- PIL ----------------------------------------------------------------------------------------------


def test_pil_round_trip_resizes_any_image():
    model = make_tokenizer().eval()
    images = [Image.new("RGB", (30, 45), (200, 20, 20)), Image.new("L", (16, 16), 90), Image.new("RGBA", (8, 8))]
    codes = model.images_to_codes(images)
    assert codes.shape == (3, 16)
    decoded = model.codes_to_images(codes)
    assert [image.size for image in decoded] == [(16, 16)] * 3 and decoded[0].mode == "RGB"
    assert model.codes_to_images(codes[0], size=(30, 45))[0].size == (30, 45)


# --- save / load --------------------------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_codes(tmp_path):
    model = make_tokenizer()
    images = make_synthetic_images()
    train_steps(model, images, steps=3)
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = UniMPImageTokenizer.from_pretrained(tmp_path).eval()
    assert loaded.config.channel_multipliers == (1, 2, 2) and loaded.config.grid_size == 4
    assert torch.equal(loaded.encode(images), model.encode(images))
    torch.testing.assert_close(loaded.decode(model.encode(images)), model.decode(model.encode(images)))
    for name, buffer in model.quantizer.named_buffers():
        assert torch.equal(getattr(loaded.quantizer, name), buffer), name


def test_remote_code_checkpoint_loads_with_auto_model(tmp_path):
    from transformers import AutoModel

    model = make_tokenizer().eval()
    UniMPImageTokenizerConfig.register_for_auto_class()
    UniMPImageTokenizer.register_for_auto_class("AutoModel")
    try:
        model.save_pretrained(tmp_path)
    finally:
        UniMPImageTokenizerConfig._auto_class = None
        UniMPImageTokenizer._auto_class = None
    config = json.loads((tmp_path / "config.json").read_text())
    # plain strings, not the (slow, fast) pair transformers writes for classes named "*Tokenizer*"
    assert config["auto_map"] == {
        "AutoConfig": "image_tokenizer_unimp.UniMPImageTokenizerConfig",
        "AutoModel": "image_tokenizer_unimp.UniMPImageTokenizer",
    }
    assert (tmp_path / "image_tokenizer_unimp.py").is_file()
    assert type(AutoModel.from_pretrained(tmp_path, trust_remote_code=True)).__name__ == "UniMPImageTokenizer"
    # the package registers the class locally, so AutoModel may pick it: load the saved remote code explicitly
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    remote_class = get_class_from_dynamic_module("image_tokenizer_unimp.UniMPImageTokenizer", str(tmp_path))
    loaded = remote_class.from_pretrained(tmp_path).eval()
    assert remote_class.__module__.startswith("transformers_modules")
    images = make_synthetic_images(2)
    assert torch.equal(loaded.encode(images), model.encode(images))


# --- recipe -------------------------------------------------------------------------------------------


def test_recipe_trains_saves_and_reports_metrics(tmp_path, data_dir):
    from recipes.train_image_tokenizer import ImageTokenizerRecipeArguments, main

    args = ImageTokenizerRecipeArguments(
        dataset="hm-sample",
        data_dir=str(data_dir),
        max_images=12,
        holdout_fraction=0.25,
        max_steps=2,
        batch_size=4,
        output_dir=str(tmp_path),
        logging_steps=1,
        num_contact_sheet_images=3,
        **{key: value for key, value in TINY.items() if key != "channel_multipliers"},
        channel_multipliers=list(TINY["channel_multipliers"]),
    )
    metrics = main(args)
    assert (metrics["num_train_images"], metrics["num_heldout_images"], metrics["steps"]) == (9, 3, 2)
    assert 0 < metrics["heldout_codebook_usage"] <= 1 and metrics["heldout_perplexity"] >= 1
    assert math.isfinite(metrics["heldout_psnr"]) and -1 <= metrics["heldout_ssim"] <= 1
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert Image.open(tmp_path / "contact_sheet.png").size == (8 * 32, 2 * 32)
    assert UniMPImageTokenizer.from_pretrained(tmp_path).config.resolution == 16
    assert (tmp_path / "cache" / "images_hm-sample_16px.pt").is_file()


def test_recipe_yaml_keys_are_dataclass_fields_and_overrides_apply():
    from recipes.train_image_tokenizer import build_config, parse_args

    yaml_path = str(Path(__file__).resolve().parents[1] / "recipes" / "configs" / "image_tokenizer_tiny.yaml")
    args = parse_args([yaml_path, "dataset=hm-sample", "max_steps=5"])
    assert (args.dataset, args.max_steps, args.batch_size) == ("hm-sample", 5, 16)
    assert build_config(args).num_image_codes == 64
    with pytest.raises(ValueError, match="not_a_field"):
        parse_args([yaml_path, "not_a_field=1"])
