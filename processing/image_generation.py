"""User-guided image generation helpers (issue 7, reference §2.2 (vi), §4.5): the `<img_c>` code-token vocabulary,
constrained decoding of one full code grid, and the offline image metrics (Fréchet distance and nearest-neighbour
retrieval in a vision tower's feature space).

The constraint itself lives in the checkpoint file `modeling_unimp/pipeline_image_generation_unimp.py` (a pipeline
loaded as remote code may import only its own folder) and is re-exported here.
"""

from collections.abc import Sequence

import torch

from modeling_unimp.pipeline_image_generation_unimp import UniMPImageCodeLogitsProcessor
from modeling_unimp.prompt_templates import image_code_token

# Shape letters: n, m sets of images, d feature dimension, S codes per image, K codebook size.


def image_code_tokens(num_image_code_tokens: int) -> list[str]:
    """The K code tokens `<img_0>` ... `<img_{K-1}>`, in vocabulary order (`UniMPProcessor.from_catalogue` adds them).

    Args:
        num_image_code_tokens: K, the image tokenizer's codebook size.
    Returns:
        list of K token strings.
    """
    if num_image_code_tokens < 1:
        raise ValueError(f"num_image_code_tokens must be >= 1 (the codebook size), got {num_image_code_tokens}")
    return [image_code_token(code) for code in range(num_image_code_tokens)]


def image_code_token_ids(config) -> range:
    """The contiguous vocabulary ids of `<img_0>` ... `<img_{K-1}>` recorded on a UniMPConfig by `prepare_model`.

    Args:
        config: a `UniMPConfig` (or any object) with `image_code_token_start_id` and `num_image_code_tokens`.
    Returns:
        range of K token ids.
    """
    start = getattr(config, "image_code_token_start_id", None)
    count = getattr(config, "num_image_code_tokens", 0) or 0
    if start is None or count < 1:
        raise ValueError("config records no <img_c> tokens: build the processor with num_image_code_tokens=K and call "
                         "processor.prepare_model(model)")
    return range(start, start + count)


def token_ids_to_codes(token_ids: Sequence[int] | torch.Tensor, code_token_ids: range, num_image_codes: int
                       ) -> torch.LongTensor:
    """Generated token ids -> the S code indices of one image; EOS / padding after the grid are ignored.

    Args:
        token_ids: the generated continuation (prompt removed), (L,) with L >= S.
        code_token_ids: `image_code_token_ids(config)`.
        num_image_codes: S = grid_size².
    Returns:
        `torch.LongTensor` (S,) in [0, K).
    Raises:
        ValueError: when one of the first S tokens is not a code token, naming its position.
    """
    token_ids = torch.as_tensor(token_ids).flatten().tolist()
    if len(token_ids) < num_image_codes:
        raise ValueError(f"incomplete image code grid: {len(token_ids)} tokens, expected {num_image_codes}")
    codes = []
    for position, token_id in enumerate(token_ids[:num_image_codes]):
        if token_id not in code_token_ids:
            raise ValueError(f"token {token_id} at position {position} is not an <img_c> token ({code_token_ids})")
        codes.append(token_id - code_token_ids.start)
    return torch.tensor(codes, dtype=torch.long)


# ----------------------------------------------------------------------------------------------
# Offline image metrics
# ----------------------------------------------------------------------------------------------

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


__all__ = [
    "UniMPImageCodeLogitsProcessor",
    "compute_frechet_distance",
    "compute_retrieval_metrics",
    "image_code_token_ids",
    "image_code_tokens",
    "token_ids_to_codes",
]
