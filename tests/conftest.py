"""Test session set-up: offline Hugging Face stack, temp caches, seeded torch (STYLE.md §7)."""

import os
import subprocess
import sys
import tempfile

# Set before any Hugging Face import: the libraries read these at import time.
_TMP = tempfile.mkdtemp(prefix="unimp-tests-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ["HF_HOME"] = os.path.join(_TMP, "hf_home")
os.environ["HF_MODULES_CACHE"] = os.path.join(_TMP, "hf_modules")
os.environ["HF_DATASETS_CACHE"] = os.path.join(_TMP, "hf_datasets")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
# The library resolves ../shared/data from the working directory; the tests pin it to the checkout.
os.environ.setdefault("UNIMP_DATA_DIR", str(REPO_ROOT.parent / "shared" / "data"))
DATA_DIR = Path(os.environ["UNIMP_DATA_DIR"])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data folder; tests that need it skip with the reason when it is absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"real data folder {DATA_DIR} is absent (set UNIMP_DATA_DIR)")
    return DATA_DIR


IMAGE_TOKEN_ID = 3  # the tiny vocabulary's `<image>` id in model-only tests (the processor assigns real ids)


def assert_updates_match(actual: dict, expected: dict) -> None:
    """Parameter updates (name -> tensor) of two runs that sum the same float32 gradient terms in another order.

    The rounding of a float32 sum is a few eps times the size of its terms, not of its result: a gradient that
    cancels to about 0 (a key bias under softmax) keeps only that rounding noise. So the absolute tolerance is
    eps x 1e3 (terms summed, generously) x the largest update in the model; rtol covers the rest. It holds on any
    CPU's kernels (AVX2 or AVX-512 reorder sums), unlike bit-exact or Adam-amplified comparisons.
    """
    scale = max(max(t.abs().max().item() for t in expected.values()), 1e-30)
    assert scale > 1e-12, "the step did not move the weights: nothing to compare"
    atol = torch.finfo(torch.float32).eps * 1e3 * scale
    for name, update in expected.items():
        torch.testing.assert_close(actual[name], update, rtol=1e-3, atol=atol, msg=name)


def set_gates(model, value: float):
    """Fill every tanh gate of the cross-attention blocks (0 = the bare LM; > 0 lets images move the scores)."""
    for block in model.model.gated_cross_attn:
        block.attn_gate.data.fill_(value)
        block.ff_gate.data.fill_(value)
    return model


def make_tiny_model(processor, gate: float | None = None, **config_overrides):
    """The STYLE.md §7 tiny model (seed 0) prepared for `processor`'s tokens; `gate` opens the tanh gates."""
    from modeling_unimp import UniMPForConditionalGeneration

    torch.manual_seed(0)
    model = UniMPForConditionalGeneration(make_tiny_config(**config_overrides)).eval()
    processor.prepare_model(model)
    return model if gate is None else set_gates(model, gate)


def without_package_prelude() -> str:
    """Python source that leaves only site-packages importable: run with `python -I -S -c prelude + script`, neither
    the cwd nor the editable install's finder puts `modeling_unimp`/`processing` on the path (remote-code checks)."""
    site = [p for p in sys.path if p.endswith("site-packages")]
    return (f"import sys; sys.path[:0] = {site!r}; sys.meta_path[:] = [f for f in sys.meta_path "
            f"if 'editable' not in type(f).__module__ and 'editable' not in getattr(f, '__name__', '')]\n")


def run_without_package(script: str, cwd, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `script` in a fresh interpreter that cannot import this repository's packages; fails the test on error."""
    result = subprocess.run([sys.executable, "-I", "-S", "-c", without_package_prelude() + script], cwd=cwd,
                            env={**os.environ, "PYTHONPATH": ""}, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def make_tiny_config(**overrides):
    """STYLE.md §7 tiny model: CLIP 32-px/patch 8, hidden 32; Llama hidden 32, 2 layers; xattn every layer."""
    from modeling_unimp import UniMPConfig

    fields = {
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        "text_config": {
            "model_type": "llama",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "vocab_size": 128,
            "max_position_embeddings": 256,
        },
        "perceiver_depth": 1,
        "perceiver_num_latents": 4,
        "perceiver_num_heads": 2,
        "perceiver_head_dim": 8,
        "cross_attn_every_n_layers": 1,
        "cross_attn_num_heads": 2,
        "cross_attn_head_dim": 8,
        "image_token_id": IMAGE_TOKEN_ID,
    }
    fields.update(overrides)
    return UniMPConfig(**fields)


@pytest.fixture
def tiny_config():
    return make_tiny_config()


TINY_CATALOGUE = {  # three items; item "m3" has no image
    "item_ids": ["m1", "m2", "m3"],
    "item_titles": ["Toy Story", "Heat", "Up"],
}


@pytest.fixture(scope="module")
def text_encoder(tiny_tokenizer):
    """A tiny BERT over the session tokenizer, standing in for MiniLM (same pooling code path as item content)."""
    import copy

    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tiny_tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    return BertModel(config).eval(), copy.deepcopy(tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from modeling_unimp import train_catalogue_tokenizer

    corpus = ["Title Toy Story Genre Animation Comedy", "Title Heat Genre Action Crime", "What next?"] * 5
    return train_catalogue_tokenizer(corpus, vocab_size=300)


@pytest.fixture
def tiny_processor(tiny_tokenizer):
    import copy

    from modeling_unimp import UniMPProcessor

    return UniMPProcessor.from_catalogue(copy.deepcopy(tiny_tokenizer), image_size=32, **TINY_CATALOGUE)


def fake_evaluation(order: list[tuple[str, str, str]], split: str, none: dict, history: dict) -> dict:
    """A `recipes.evaluate` metrics_<split>.json with the given per-user ranks, users in reverse split order."""
    users = [row[0] for row in reversed(order)]  # recipes.evaluate's row order need not be the split file's
    column = 2 if split == "test" else 1
    target = {row[0]: row[column] for row in order}
    return {"eval_users_per_second": 50.0, "num_items": 9, "max_history_items": 50, "context_order": "next_item",
            "content_history_items": 10,
            "ranks": {"user_ids": users, "target_item_ids": [target[u] for u in users],
                      "none": [none[u] for u in users], "history": [history[u] for u in users]}}
