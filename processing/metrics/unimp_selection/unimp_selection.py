"""UniMP item-selection precision/recall/F1 as a local `evaluate` module (reference unimp_method.md §4.3)."""

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
    # processing/metrics/<name>/<name>.py -> processing/metrics_unimp.py
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

_DESCRIPTION = """\
Per user, with G the generated token set and T the ground-truth set: precision = |G & T| / |G|
(0 if G is empty), recall = |G & T| / |T|, F1 = their harmonic mean (0 if both are 0); each
averaged over users.
Formulas and code: processing/metrics_unimp.py compute_selection_metrics.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (`list[str]` or `list[list[str]]`): per user, the answer (split on whitespace) or its tokens,
        e.g. "s_0 s_3".
    references (`list[list[str]]` or `list[str]`): per user, the ground-truth tokens, e.g. ["s_0", "s_2"].
Returns:
    `dict[str, float]`: precision, recall, f1.
"""


class UniMPSelection(evaluate.Metric):
    """Selection P/R/F1; `compute` delegates to `metrics_unimp.compute_selection_metrics`."""

    def _info(self):
        string, tokens = datasets.Value("string"), datasets.Sequence(datasets.Value("string"))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": string, "references": tokens}),
                datasets.Features({"predictions": tokens, "references": tokens}),
                datasets.Features({"predictions": string, "references": string}),
            ],
        )

    def _compute(self, predictions, references):
        return metrics_unimp.compute_selection_metrics(predictions, references)
