"""UniMP metrics as one local `evaluate` module; `config_name` picks the task (reference unimp_method.md §4).

    evaluate.load("processing/metrics/unimp", config_name="ranking")  # or "rating", "selection", "text"

or `processing.metrics_unimp.load_metric("unimp_ranking")`. Every formula lives in `processing/metrics_unimp.py`;
this file only declares each task's inputs and delegates `compute` to it.
"""

import hashlib
import importlib
import importlib.util
import json
import sys
from pathlib import Path

import datasets
import evaluate


def _import_metrics_unimp():
    """Return the repo's `processing/metrics_unimp.py` module, which holds every formula.

    `evaluate` runs a *copy* of this file from `HF_MODULES_CACHE`, so neither a relative import nor
    `__file__` reaches the repo. In order: (1) reuse `processing.metrics_unimp` when the process has
    imported it already (`load_metric` does), so the module and the caller's functions are the same
    objects; (2) load `metrics_unimp.py` by path from the checkout this file was copied from, which
    `evaluate` records as "original file path" in the `<name>.json` it writes beside the copy (a
    plain or editable install works the same way: the path then points into it); (3) import the
    installed package `processing.metrics_unimp`.
    """
    module = sys.modules.get("processing.metrics_unimp")
    if module is not None:
        return module
    here = Path(__file__).resolve()
    record = here.with_suffix(".json")
    origin = (
        Path(json.loads(record.read_text(encoding="utf-8"))["original file path"])
        if record.is_file()
        else here
    )
    # processing/metrics/unimp/unimp.py -> processing/metrics_unimp.py
    path = origin.resolve().parents[2] / "metrics_unimp.py"
    if path.is_file():
        name = "_unimp_metrics_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        return sys.modules[name]
    try:
        return importlib.import_module("processing.metrics_unimp")
    except ImportError as error:
        raise ImportError(
            f"cannot find processing/metrics_unimp.py next to {origin}; install the unimp repo "
            "(pip install -e .) or load this module from its checkout"
        ) from error


metrics_unimp = _import_metrics_unimp()

_CITATION = """\
@inproceedings{wei2024unimp,
  title={Towards Unified Multi-Modal Personalization: Large Vision-Language Models
         for Generative Recommendation and Beyond},
  author={Wei, Tianxin and Jin, Bowen and Li, Ruirui and Zeng, Hansi and Wang, Zhengyang and Sun, Jianhui
          and Yin, Qingyu and Lu, Hanqing and Wang, Suhang and He, Jingrui and Tang, Xianfeng},
  booktitle={International Conference on Learning Representations (ICLR)},
  year={2024}
}
"""

_STRING = datasets.Value("string")
_TOKENS = datasets.Sequence(datasets.Value("string"))


def _compute_ranking(predictions, references, ks=metrics_unimp.DEFAULT_KS):
    return metrics_unimp.compute_ranking_metrics(predictions, references, ks=ks)


def _compute_rating(predictions, references, default=metrics_unimp.DEFAULT_RATING):
    num_unparsable = 0
    if predictions and isinstance(predictions[0], str):
        predictions, num_unparsable = metrics_unimp.parse_ratings(predictions, default=default)
    return metrics_unimp.compute_rating_metrics(predictions, references) | {"num_unparsable": num_unparsable}


def _compute_selection(predictions, references):
    return metrics_unimp.compute_selection_metrics(predictions, references)


def _compute_text(predictions, references, use_stemmer=True):
    return metrics_unimp.compute_text_metrics(predictions, references, use_stemmer=use_stemmer)


# config_name -> (description, inputs description, features, compute); evaluate tries a list of features in
# order and keeps the first that encodes the first batch.
_CONFIGS = {
    # HR@k/NDCG@k/MRR@k (unimp_method.md §4.1, peer_protocol.md §3)
    "ranking": (
        """\
HR@k, NDCG@k and MRR@k of ranked item lists with one relevant item per user, averaged over users.
With r the target's 1-based rank (repeated entries counted once; r = inf when absent):
HR@k = 1[r <= k], NDCG@k = 1/log2(r+1) if r <= k else 0, MRR@k = 1/r if r <= k else 0.
Formulas and code: processing/metrics_unimp.py compute_ranking_metrics.
""",
        """\
Args:
    predictions (`list[list[int]]` or `list[list[str]]`): per user, the ranked item ids, best first.
    references (`list[int]` or `list[str]`): per user, the relevant item id (same type as predictions).
    ks (`int` or `list[int]`, defaults to (3, 5, 10, 20)): cut-offs.
Returns:
    `dict[str, float]`: hr@k, ndcg@k and mrr@k for each k.
""",
        # string ids first: int64 would cast "3" to 3
        [
            datasets.Features({"predictions": _TOKENS, "references": _STRING}),
            datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
            ),
        ],
        _compute_ranking,
    ),
    # rating MAE/RMSE (unimp_method.md §4.4)
    "rating": (
        """\
MAE = mean |r_hat - r| and RMSE = sqrt(mean (r_hat - r)^2) of predicted ratings. Predictions may be numbers or
the generated `rate_X` answers, parsed as the official eval_exp.py does (unparsable -> 3.0, counted).
Formulas and code: processing/metrics_unimp.py compute_rating_metrics and parse_ratings.
""",
        """\
Args:
    predictions (`list[float]` or `list[str]`): predicted ratings, or answers such as "rate_4 great soap".
    references (`list[float]`): ground-truth ratings.
    default (`float`, defaults to 3.0): the rating given to unparsable answers.
Returns:
    `dict`: mae and rmse (`float`), and num_unparsable (`int`, 0 when predictions are numbers).
""",
        # answers first: a str such as "4" would otherwise be cast silently to float
        [
            datasets.Features({"predictions": _STRING, "references": datasets.Value("float64")}),
            datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}),
        ],
        _compute_rating,
    ),
    # item-selection precision/recall/F1 (unimp_method.md §4.3)
    "selection": (
        """\
Per user, with G the generated token set and T the ground-truth set: precision = |G & T| / |G|
(0 if G is empty), recall = |G & T| / |T|, F1 = their harmonic mean (0 if both are 0); each
averaged over users.
Formulas and code: processing/metrics_unimp.py compute_selection_metrics.
""",
        """\
Args:
    predictions (`list[str]` or `list[list[str]]`): per user, the answer (split on whitespace) or its tokens,
        e.g. "s_0 s_3".
    references (`list[list[str]]` or `list[str]`): per user, the ground-truth tokens, e.g. ["s_0", "s_2"].
Returns:
    `dict[str, float]`: precision, recall, f1.
""",
        [
            datasets.Features({"predictions": _STRING, "references": _TOKENS}),
            datasets.Features({"predictions": _TOKENS, "references": _TOKENS}),
            datasets.Features({"predictions": _STRING, "references": _STRING}),
        ],
        _compute_selection,
    ),
    # explanation ROUGE-1/2/L, BLEU-4 and unigram precision (unimp_method.md §4.4)
    "text": (
        """\
Offline text metrics of generated explanations: ROUGE-1/2/L (mean rouge_score F-measure), BLEU-4
(sacrebleu corpus BLEU / 100) and the corpus clipped unigram precision that the paper reports as "BLEU"
(HF bleu precisions[0]: 13a tokens, no brevity penalty).
Code: processing/metrics_unimp.py compute_text_metrics.
""",
        """\
Args:
    predictions (`list[str]`): generated explanations.
    references (`list[str]`): one reference explanation per prediction.
    use_stemmer (`bool`, defaults to True): Porter-stem tokens before ROUGE matching.
Returns:
    `dict[str, float]`: rouge1, rouge2, rougeL, bleu4, unigram_precision, each in [0, 1].
""",
        datasets.Features({"predictions": _STRING, "references": _STRING}),
        _compute_text,
    ),
}


class UniMP(evaluate.Metric):
    """UniMP metric for the task `config_name` names; `compute` delegates to `processing/metrics_unimp.py`."""

    def _info(self):
        if self.config_name not in _CONFIGS:
            raise ValueError(f"config_name must be one of {tuple(_CONFIGS)}, got {self.config_name!r}")
        description, inputs_description, features, _ = _CONFIGS[self.config_name]
        return evaluate.MetricInfo(
            description=description,
            citation=_CITATION,
            inputs_description=inputs_description,
            features=features,
        )

    def _compute(self, predictions, references, **kwargs):
        return _CONFIGS[self.config_name][3](predictions, references, **kwargs)
