"""Client side of the fake-Hub round trip, run in a subprocess by tests/test_fake_hub.py.

`HF_ENDPOINT` is read when `huggingface_hub` is imported, so the client runs in its own process with
the environment from `FakeHub.client_env` (see tests/fake_hub.py). Two steps share `WORKDIR`:

    python tests/hub_client_check.py push WORKDIR   # build tiny artefacts and push them
    python tests/hub_client_check.py pull WORKDIR   # fresh cache: download and compare

Each step prints one JSON object on its last stdout line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

MODEL_REPO = "org/tiny"
REMOTE_CODE_REPO = "org/remote"
DATASET_REPO = "org/ds"
SAMPLE_TEXT = "the user bought a red lamp and a blue chair"
CARD_MARKER = "UniMP fake-hub model card marker"
CORPUS = [
    "the user bought a red lamp", "the user liked a blue chair", "recommend a green sofa",
    "a red chair and a blue lamp", "the next item is a green lamp", "users buy chairs and lamps",
] * 20
REMOTE_CONFIG_PY = '''\
from transformers import PretrainedConfig


class ToyConfig(PretrainedConfig):
    model_type = "toy"

    def __init__(self, toy_width=3, **kwargs):
        self.toy_width = toy_width
        super().__init__(**kwargs)
'''


def _assert_hub_env() -> None:
    endpoint = os.environ.get("HF_ENDPOINT", "")
    if not endpoint.startswith(("http://127.0.0.1:", "http://localhost:", "http://[::1]:")):
        raise SystemExit(f"refusing to run against a non-loopback HF_ENDPOINT {endpoint!r}")


def _tiny_model(num_layers: int, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=num_layers,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=1, bos_token_id=2, eos_token_id=3)
    return LlamaForCausalLM(config).eval()


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=64, special_tokens=["<unk>", "<pad>", "<s>", "</s>"])
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>")


def _images(split: str, n: int):
    """Deterministic noisy RGB images (PNG is lossless, so pixels must survive the round trip)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0 if split == "train" else 1)
    return [Image.fromarray(rng.integers(0, 256, (8, 6 + i, 3), dtype=np.uint8), "RGB") for i in range(n)]


def _logits(model, input_ids):
    import torch

    with torch.no_grad():
        return model(input_ids=input_ids).logits


def push(workdir: Path) -> dict:
    import torch
    from datasets import Dataset, DatasetDict, Features, Image, Value
    from huggingface_hub import HfApi, ModelCard, ModelCardData, upload_file, upload_folder, whoami

    out: dict = {"whoami": whoami()["name"]}
    model, tokenizer = _tiny_model(num_layers=1, seed=0), _tiny_tokenizer()
    input_ids = torch.tensor([tokenizer(SAMPLE_TEXT)["input_ids"]])
    torch.save({"input_ids": input_ids, "logits": _logits(model, input_ids)}, workdir / "main_ref.pt")
    out["model_commit"] = model.push_to_hub(MODEL_REPO, private=True, commit_message="x").oid
    out["tokenizer_commit"] = tokenizer.push_to_hub(MODEL_REPO, commit_message="add tokenizer").oid
    out["token_ids"] = input_ids[0].tolist()

    dev_model = _tiny_model(num_layers=2, seed=1)
    torch.save({"logits": _logits(dev_model, input_ids)}, workdir / "dev_ref.pt")
    dev_model.push_to_hub(MODEL_REPO, revision="dev", commit_message="dev weights")
    upload_file(path_or_fileobj=b"only on dev\n", path_in_repo="dev_only.txt", repo_id=MODEL_REPO, revision="dev",
                commit_message="dev marker")

    remote = workdir / "remote_code"
    remote.mkdir()
    (remote / "configuration_toy.py").write_text(REMOTE_CONFIG_PY)
    (remote / "config.json").write_text(json.dumps({
        "model_type": "toy", "toy_width": 7, "auto_map": {"AutoConfig": "configuration_toy.ToyConfig"}}))
    HfApi().create_repo(REMOTE_CODE_REPO, exist_ok=True)
    out["remote_commit"] = upload_folder(repo_id=REMOTE_CODE_REPO, folder_path=remote,
                                         commit_message="remote code").oid

    card_data = ModelCardData(license="mit", library_name="transformers", tags=["unimp-fake-hub"])
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n# tiny\n\n{CARD_MARKER}\n")
    out["card_commit"] = card.push_to_hub(MODEL_REPO, commit_message="card").oid

    features = Features({"image": Image(), "label": Value("int64")})
    splits = {"train": 3, "test": 2}
    dd = DatasetDict({s: Dataset.from_dict({"image": _images(s, n), "label": list(range(n))}, features=features)
                      for s, n in splits.items()})
    out["dataset_commit"] = dd.push_to_hub(DATASET_REPO, commit_message="dataset").oid
    out["api"] = _api_extras()
    return out


def _api_extras() -> dict:
    """Less common `HfApi` calls a recipe or `Trainer.push_to_hub` may make."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    api, out = HfApi(), {}
    api.create_tag(MODEL_REPO, tag="v0", revision="main")
    refs = api.list_repo_refs(MODEL_REPO)
    out["branches"] = sorted(ref.name for ref in refs.branches)
    out["tags"] = [ref.name for ref in refs.tags]
    out["commit_titles"] = [c.title for c in api.list_repo_commits(MODEL_REPO)]
    infos = api.get_paths_info(MODEL_REPO, ["config.json", "model.safetensors", "missing.txt"], expand=True)
    out["paths_info"] = {i.path: [i.size > 0, i.lfs is not None, i.last_commit is not None] for i in infos}
    out["dataset_tree"] = sorted(e.path for e in api.list_repo_tree(DATASET_REPO, repo_type="dataset",
                                                                     recursive=True))
    siblings = api.model_info(MODEL_REPO, files_metadata=True).siblings
    out["safetensors_sha256_known"] = any(s.rfilename == "model.safetensors" and s.lfs for s in siblings)
    pr = api.upload_file(path_or_fileobj=b"proposal\n", path_in_repo="pr.txt", repo_id=MODEL_REPO, create_pr=True,
                         commit_message="proposal")
    out["pr"] = [pr.pr_revision, api.file_exists(MODEL_REPO, "pr.txt"),
                 api.file_exists(MODEL_REPO, "pr.txt", revision=pr.pr_revision)]
    scratch = api.create_repo("org/scratch").repo_id
    api.upload_file(path_or_fileobj=b"a", path_in_repo="a/b.txt", repo_id=scratch, commit_message="add")
    api.delete_file("a/b.txt", scratch, commit_message="delete")
    out["scratch_after_delete"] = api.list_repo_files(scratch)
    api.delete_repo(scratch)
    try:
        api.repo_info(scratch)
        out["scratch_deleted"] = False
    except RepositoryNotFoundError:
        out["scratch_deleted"] = True
    return out


def pull(workdir: Path) -> dict:
    import numpy as np
    import torch
    from datasets import load_dataset
    from huggingface_hub import ModelCard, hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out: dict = {}
    main_ref, dev_ref = torch.load(workdir / "main_ref.pt"), torch.load(workdir / "dev_ref.pt")
    model = AutoModelForCausalLM.from_pretrained(MODEL_REPO).eval()
    out["main_logits_equal"] = torch.equal(_logits(model, main_ref["input_ids"]), main_ref["logits"])
    out["main_num_layers"] = model.config.num_hidden_layers
    tokenizer = AutoTokenizer.from_pretrained(MODEL_REPO)
    out["tokenizer_class"] = type(tokenizer).__name__
    out["token_ids"] = tokenizer(SAMPLE_TEXT)["input_ids"]

    dev = AutoModelForCausalLM.from_pretrained(MODEL_REPO, revision="dev").eval()
    out["dev_num_layers"] = dev.config.num_hidden_layers
    out["dev_logits_equal"] = torch.equal(_logits(dev, main_ref["input_ids"]), dev_ref["logits"])
    out["dev_marker"] = Path(hf_hub_download(MODEL_REPO, "dev_only.txt", revision="dev")).read_text()
    try:
        hf_hub_download(MODEL_REPO, "dev_only.txt")
        out["dev_marker_on_main"] = True
    except EntryNotFoundError:
        out["dev_marker_on_main"] = False

    snap = Path(snapshot_download(REMOTE_CODE_REPO))
    out["remote_files"] = sorted(p.name for p in snap.iterdir())
    out["remote_py_equal"] = (snap / "configuration_toy.py").read_text() == REMOTE_CONFIG_PY
    config = AutoConfig.from_pretrained(REMOTE_CODE_REPO, trust_remote_code=True)
    out["remote_config"] = [type(config).__name__, config.toy_width]

    card = ModelCard.load(MODEL_REPO)
    out["card"] = {"license": card.data.license, "tags": card.data.tags, "marker": CARD_MARKER in card.text}

    dd = load_dataset(DATASET_REPO)
    out["dataset_splits"] = {name: split.num_rows for name, split in dd.items()}
    out["dataset_images_equal"] = all(
        np.array_equal(np.asarray(row["image"].convert("RGB")), np.asarray(ref))
        for name in ("train", "test")
        for row, ref in zip(dd[name], _images(name, dd[name].num_rows), strict=True))
    out["dataset_labels"] = {name: list(dd[name]["label"]) for name in dd}
    return out


def main(argv: list[str]) -> None:
    step, workdir = argv[1], Path(argv[2])
    _assert_hub_env()
    result = {"push": push, "pull": pull}[step](workdir)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv)
