"""Test session set-up: offline Hugging Face stack, temp caches, seeded torch (STYLE.md §7)."""

import os
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
DATA_DIR = Path(os.environ.get("UNIMP_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data folder; tests that need it skip with the reason when it is absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"real data folder {DATA_DIR} is absent (set UNIMP_DATA_DIR)")
    return DATA_DIR
