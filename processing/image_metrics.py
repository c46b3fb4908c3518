"""Offline image metrics: PSNR and SSIM of reconstructions, the Fréchet distance between feature sets, nearest-
catalogue-image retrieval and image-text retrieval accuracy (reference §4.5; issue 7).
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Shape letters: n, m sets of images, d feature dimension, B images, C channels, H, W pixels.


def compute_psnr(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image.

    PSNR = 10 * log10(data_range^2 / MSE), MSE = mean over (C, H, W) of (a - b)^2; +inf when a == b.
    `data_range` is max - min of the pixel scale: 1.0 for [0, 1] images, 255 for uint8, 2.0 for [-1, 1]
    (PSNR does not depend on the offset, only on the range).

    Args:
        a, b (`torch.Tensor` of shape `(B, C, H, W)` or `(C, H, W)`): the images to compare.

    Returns:
        `torch.Tensor` of shape `(B,)` (or `()` for unbatched input), in dB.
    """
    if a.shape != b.shape:
        raise ValueError(f"compute_psnr needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    mse = (a.double() - b.double()).pow(2).flatten(-3).mean(-1)
    return 10 * torch.log10(data_range**2 / mse)  # mse = 0 gives +inf


def compute_ssim(
    a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0, window_size: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Structural similarity per image (Wang et al., 2004), with a Gaussian window and 'valid' borders.

    For each window position and channel, with Gaussian-weighted means mu, variances sigma^2 and
    covariance sigma_ab:
        SSIM = ((2 mu_a mu_b + C1) (2 sigma_ab + C2)) / ((mu_a^2 + mu_b^2 + C1) (sigma_a^2 + sigma_b^2 + C2)),
    C1 = (0.01 * data_range)^2, C2 = (0.03 * data_range)^2; the result is the mean over positions and channels.
    The window is 11 x 11 with sigma 1.5, as in the reference implementation. The luminance term depends
    on the pixel offset, so pass images on the [0, data_range] scale (map [-1, 1] images with (x + 1) / 2).

    Args:
        a, b (`torch.Tensor` of shape `(B, C, H, W)` or `(C, H, W)`, H and W >= window_size).
        data_range (`float`): max - min of the pixel scale (1.0 for [0, 1] images).

    Returns:
        `torch.Tensor` of shape `(B,)` (or `()` for unbatched input), 1.0 for identical images.
    """
    if a.shape != b.shape:
        raise ValueError(f"compute_ssim needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    unbatched = a.ndim == 3
    if unbatched:
        a, b = a[None], b[None]
    if a.ndim != 4 or min(a.shape[-2:]) < window_size:
        raise ValueError(f"compute_ssim needs (B, C, H, W) with H, W >= {window_size}, got {tuple(a.shape)}")
    a, b = a.double(), b.double()
    channels = a.shape[1]
    offsets = torch.arange(window_size, dtype=torch.float64, device=a.device) - (window_size - 1) / 2
    gauss = torch.exp(-(offsets**2) / (2 * sigma**2))
    gauss = gauss / gauss.sum()
    window = (gauss[:, None] * gauss[None, :]).expand(channels, 1, window_size, window_size)  # depthwise

    def filter_(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=channels)  # (B, C, H - ws + 1, W - ws + 1)

    mu_a, mu_b = filter_(a), filter_(b)
    var_a = filter_(a * a) - mu_a**2
    var_b = filter_(b * b) - mu_b**2
    cov = filter_(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    ssim = ssim_map.flatten(1).mean(1)  # (B,)
    return ssim[0] if unbatched else ssim


def _covariance(features: torch.Tensor) -> torch.Tensor:
    centered = features - features.mean(0, keepdim=True)
    return centered.T @ centered / (features.shape[0] - 1)  # (d, d), unbiased


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return eigenvectors @ torch.diag(eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def compute_frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (the FID formula, Heusel et al. 2017).

        FD = ||mu_a - mu_b||² + Tr(S_a + S_b - 2 (S_a^½ S_b S_a^½)^½)

    with mu the means and S the unbiased covariances. Computed in float64 with symmetric eigendecompositions
    (Tr (S_a^½ S_b S_a^½)^½ = Tr (S_a S_b)^½), so it is exactly 0 for a set with itself up to rounding. In 1-D it is
    (mu_a - mu_b)² + (sigma_a - sigma_b)². Called "Fréchet distance in <feature space>", not FID, unless the
    features are Inception-v3 pool features.

    Args:
        features_a: (n, d), n >= 2.
        features_b: (m, d), m >= 2.
    Returns:
        the distance, a float >= 0 (up to rounding).
    """
    if features_a.ndim != 2 or features_b.ndim != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"features must be (n, d) and (m, d) with the same d, got {tuple(features_a.shape)} and "
                         f"{tuple(features_b.shape)}")
    if min(features_a.shape[0], features_b.shape[0]) < 2:
        raise ValueError("each feature set needs at least 2 rows to estimate a covariance")
    a, b = features_a.double(), features_b.double()
    mean_term = (a.mean(0) - b.mean(0)).pow(2).sum()
    covariance_a, covariance_b = _covariance(a), _covariance(b)
    sqrt_a = _psd_sqrt(covariance_a)
    middle = sqrt_a @ covariance_b @ sqrt_a  # symmetric PSD, same trace-sqrt as S_a S_b
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return float(mean_term + covariance_a.trace() + covariance_b.trace() - 2 * trace_sqrt)


def compute_retrieval_metrics(
    query_features: torch.Tensor,
    catalogue_features: torch.Tensor,
    target_indices: Sequence[int] | torch.Tensor,
    *,
    catalogue_categories: Sequence[frozenset[str] | set[str]] | None = None,
    ks: Sequence[int] = (1, 10),
) -> dict[str, float]:
    """Nearest-catalogue-image retrieval: does an image's nearest catalogue image (cosine) name the target item?

    For query i with target t_i and catalogue items ranked by cos(q_i, c_j), best first (ties: lower index first):
        item_hit@k     = mean_i 1[t_i among the top k]
        category_hit@1 = mean_i 1[cat(top 1) ∩ cat(t_i) ≠ ∅]        (when `catalogue_categories` is given)
        category_chance = mean_i |{j : cat(j) ∩ cat(t_i) ≠ ∅}| / m  (category_hit@1 of a uniformly random item)

    Args:
        query_features: (n, d), e.g. generated images' features.
        catalogue_features: (m, d), one row per catalogue image.
        target_indices: (n,) row of each query's target in `catalogue_features`.
        catalogue_categories: m label sets (genres, or one product type); None skips the category metrics.
        ks: cut-offs of item_hit.
    Returns:
        {"item_hit@k": ..., "category_hit@1": ..., "category_chance": ..., "num_queries": n}.
    """
    targets = torch.as_tensor(target_indices, dtype=torch.long)
    if query_features.shape[0] != targets.shape[0]:
        raise ValueError(f"{query_features.shape[0]} queries but {targets.shape[0]} target indices")
    queries = torch.nn.functional.normalize(query_features.double(), dim=-1)
    catalogue = torch.nn.functional.normalize(catalogue_features.double(), dim=-1)
    similarity = queries @ catalogue.T  # (n, m)
    max_k = min(max(ks), catalogue.shape[0])
    ranked = torch.argsort(-similarity, dim=-1, stable=True)[:, :max_k]  # (n, k), ties: lower index first
    metrics = {f"item_hit@{k}": (ranked[:, :k] == targets[:, None]).any(-1).double().mean().item() for k in ks}
    if catalogue_categories is not None:
        if len(catalogue_categories) != catalogue.shape[0]:
            raise ValueError(f"{len(catalogue_categories)} category sets for {catalogue.shape[0]} catalogue images")
        categories = [frozenset(c) for c in catalogue_categories]
        top = ranked[:, 0].tolist()
        hits = [bool(categories[j] & categories[t]) for j, t in zip(top, targets.tolist())]
        metrics["category_hit@1"] = sum(hits) / max(1, len(hits))
        shares = [sum(bool(c & categories[t]) for c in categories) / len(categories) for t in targets.tolist()]
        metrics["category_chance"] = sum(shares) / max(1, len(shares))
    metrics["num_queries"] = int(targets.shape[0])
    return metrics


def compute_retrieval_accuracy(image_embeds: torch.Tensor, text_embeds: torch.Tensor, text_ids: torch.Tensor,
                               ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Image -> text retrieval over the distinct texts of the given items.

    For image i with text t(i), rank_i = |{distinct texts t' ≠ t(i) : cos(u_i, v_t') > cos(u_i, v_t(i))}| (0-based,
    ties counted in the image's favour); accuracy@k = mean_i 1[rank_i < k], mean_rank / median_rank = mean /
    median_i (rank_i + 1), mrr = mean_i 1 / (rank_i + 1).

    Args:
        image_embeds: (n, E) image embeddings of the query items.
        text_embeds: (n, E) their text embeddings (rows with equal `text_ids` are the same text).
        text_ids: (n,) int, equal for items with identical text.
        ks: cut-offs.
    Returns:
        {"accuracy@k", "mean_rank", "median_rank", "mrr", "num_queries": n, "num_candidates": distinct texts}.
    """
    unique_ids, inverse = torch.unique(text_ids, return_inverse=True)
    first = torch.full((len(unique_ids),), len(text_ids), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(len(text_ids)), reduce="amin")
    candidates = F.normalize(text_embeds[first], dim=-1)  # (m, E), one row per distinct text
    scores = F.normalize(image_embeds, dim=-1) @ candidates.T  # (n, m)
    own = scores.gather(1, inverse[:, None])  # (n, 1)
    ranks = (scores > own).sum(1)  # (n,)
    metrics = {f"accuracy@{k}": (ranks < k).float().mean().item() for k in ks}
    metrics["mean_rank"] = (ranks + 1).float().mean().item()
    metrics["median_rank"] = (ranks + 1).float().median().item()
    metrics["mrr"] = (1.0 / (ranks + 1).float()).mean().item()
    metrics["num_queries"] = len(text_ids)
    metrics["num_candidates"] = len(unique_ids)
    return metrics


# ----------------------------------------------------------------------------------------------
# Image side
# ----------------------------------------------------------------------------------------------


__all__ = [
    "compute_frechet_distance",
    "compute_psnr",
    "compute_retrieval_accuracy",
    "compute_retrieval_metrics",
    "compute_ssim",
]
