"""Image metrics (processing/image_metrics.py): PSNR, SSIM, Fréchet distance, nearest-image retrieval and
image-text retrieval accuracy, each checked against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from processing.image_metrics import (
    compute_frechet_distance,
    compute_psnr,
    compute_retrieval_accuracy,
    compute_retrieval_metrics,
    compute_ssim,
)

# ----------------------------------------------------------------------------------------------
# PSNR and SSIM (the image tokenizer's reconstructions)
# ----------------------------------------------------------------------------------------------


def test_psnr_of_identical_images_is_infinite():
    images = torch.rand(2, 3, 8, 8)
    assert torch.isinf(compute_psnr(images, images.clone())).all()


@pytest.mark.parametrize(
    ("offset", "data_range", "expected"),
    [
        (0.1, 1.0, 20.0),  # MSE 0.01: 10 log10(1 / 0.01)
        (0.2, 2.0, 20.0),  # MSE 0.04: 10 log10(4 / 0.04)
        (0.5, 1.0, 10 * math.log10(4.0)),  # MSE 0.25: 6.0206 dB
        (25.5, 255.0, 20.0),  # uint8 scale
    ],
)
def test_psnr_of_known_mse(offset, data_range, expected):
    a = torch.rand(3, 3, 8, 8) * 0.3
    psnr = compute_psnr(a, a + offset, data_range=data_range)
    assert psnr.shape == (3,)
    torch.testing.assert_close(psnr, torch.full((3,), expected, dtype=torch.float64))


def test_psnr_averages_per_image_not_over_the_batch():
    a = torch.zeros(2, 1, 4, 4)
    b = torch.stack([torch.full((1, 4, 4), 0.1), torch.full((1, 4, 4), 0.01)])
    torch.testing.assert_close(compute_psnr(a, b), torch.tensor([20.0, 40.0], dtype=torch.float64))


def test_ssim_of_identical_images_is_one():
    images = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(compute_ssim(images, images.clone()), torch.ones(2, dtype=torch.float64))


def test_ssim_of_constant_images_is_the_luminance_term():
    # sigma = 0 everywhere, so SSIM = (2 * 0.5 * 0.25 + C1) / (0.5^2 + 0.25^2 + C1) with C1 = 0.01^2
    a, b = torch.full((1, 3, 16, 16), 0.5), torch.full((1, 3, 16, 16), 0.25)
    expected = (2 * 0.5 * 0.25 + 1e-4) / (0.25 + 0.0625 + 1e-4)  # 0.800064
    torch.testing.assert_close(compute_ssim(a, b), torch.tensor([expected], dtype=torch.float64))


def test_ssim_of_one_window_matches_the_weighted_statistics():
    # an 11 x 11 image has exactly one 'valid' window position: SSIM is then the formula evaluated once
    generator = np.random.default_rng(0)
    a = generator.random((11, 11))
    b = np.clip(a + 0.2 * generator.standard_normal((11, 11)), 0, 1)
    offsets = np.arange(11) - 5
    gauss = np.exp(-(offsets**2) / (2 * 1.5**2))
    weights = np.outer(gauss, gauss) / np.outer(gauss, gauss).sum()
    mu_a, mu_b = (weights * a).sum(), (weights * b).sum()
    var_a, var_b = (weights * a * a).sum() - mu_a**2, (weights * b * b).sum() - mu_b**2
    cov = (weights * a * b).sum() - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    ssim = compute_ssim(torch.from_numpy(a)[None], torch.from_numpy(b)[None])  # unbatched (C=1, H, W)
    assert ssim.ndim == 0
    assert ssim.item() == pytest.approx(expected, rel=1e-9)
    assert compute_ssim(torch.from_numpy(b)[None], torch.from_numpy(a)[None]).item() == pytest.approx(ssim.item())


def test_ssim_rejects_images_smaller_than_the_window():
    with pytest.raises(ValueError, match="H, W >= 11"):
        compute_ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


# ----------------------------------------------------------------------------------------------
# Fréchet distance and nearest-image retrieval (generated images)
# ----------------------------------------------------------------------------------------------

def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    assert compute_frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("a, b, expected", [
    ([[0.0], [2.0]], [[3.0], [5.0]], 9.0),  # shift by 3: (mu_a - mu_b)^2
    ([[0.0], [2.0]], [[0.0], [4.0]], 3.0),  # means 1 vs 2, sigmas sqrt(2) vs 2 sqrt(2): 1 + (sqrt 2)^2
    ([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]], [[3.0, 4.0], [5.0, 4.0], [3.0, 6.0], [5.0, 6.0]], 25.0),
])
def test_frechet_distance_matches_hand_computed_gaussians(a, b, expected):
    assert compute_frechet_distance(torch.tensor(a), torch.tensor(b)) == pytest.approx(expected, abs=1e-9)


def test_frechet_distance_grows_with_the_shift():
    features = torch.randn(200, 4, generator=torch.Generator().manual_seed(1))
    distances = [compute_frechet_distance(features, features + shift) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert distances == sorted(distances) and distances[-1] == pytest.approx(4 * 2.0**2, rel=1e-6)


def test_retrieval_metrics_match_hand_computed_values():
    catalogue = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    queries = torch.tensor([[1.0, 0.1], [0.1, 1.0], [-1.0, -0.2]])  # nearest: item 0, item 1, item 3
    categories = [{"a"}, {"b"}, {"a", "b"}, {"c"}]
    metrics = compute_retrieval_metrics(queries, catalogue, [0, 2, 2], catalogue_categories=categories, ks=(1, 2))
    assert metrics["item_hit@1"] == pytest.approx(1 / 3)  # only query 0
    assert metrics["item_hit@2"] == pytest.approx(2 / 3)  # query 1 ranks item 2 second
    assert metrics["category_hit@1"] == pytest.approx(2 / 3)  # {a}∩{a}, {b}∩{a,b}; {c}∩{a,b} is empty
    assert metrics["category_chance"] == pytest.approx((2 / 4 + 3 / 4 + 3 / 4) / 3)


# ----------------------------------------------------------------------------------------------
# Image-text retrieval accuracy (the pretrained vision tower)
# ----------------------------------------------------------------------------------------------

def test_retrieval_accuracy_ranks_against_distinct_texts():
    text_embeds = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # items 1 and 2 share one text
    text_ids = torch.tensor([0, 1, 1])
    image_embeds = torch.tensor([[1.0, 0.1], [1.0, 0.0], [0.1, 1.0]])  # item 1 prefers text 0: rank 1
    metrics = compute_retrieval_accuracy(image_embeds, text_embeds, text_ids, ks=(1, 5))
    assert metrics["accuracy@1"] == pytest.approx(2 / 3)
    assert metrics["accuracy@5"] == 1.0
    assert metrics["num_candidates"] == 2 and metrics["num_queries"] == 3
