"""recipes/push_to_hub.py against the loopback FakeHub: push a tiny checkpoint and dataset, load them back elsewhere.

Clients run in subprocesses (tests/fake_hub.py): `HF_ENDPOINT` is read when huggingface_hub is imported, and this
session imported it offline (conftest.py).
"""

import copy
import json
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, make_tiny_model, without_package_prelude
from fake_hub import iter_fake_hub
from PIL import Image
from transformers import pipeline

from modeling_unimp import UniMPProcessor
from processing.datasets_unimp import load_unimp_dataset
from processing.task_records import items_by_id
from recipes import push_to_hub
from recipes.evaluate import evaluate_recommendation

fake_hub = pytest.fixture(scope="module")(iter_fake_hub)

MODEL_REPO, DATASET_REPO = "org/unimp", "org/unimp-ml100k"
TITLES = ["Toy Story", "GoldenEye", "Four Rooms", "Get Shorty", "Copycat", "Heat"]
POSTER_SIZE = (24, 36)
LICENCE = "Test terms: research use only; do not redistribute the data outside this project."
TRAINING_CONFIG = "model_preset: tiny\nmax_history_items: 10\nlearning_rate: 1.0e-3\n"


def _write_tiny_ml100k(folder: Path) -> None:
    """Six movies (three with posters) and four users in the ML-100K-with-posters layout of shared/data."""
    (folder / "posters").mkdir(parents=True)
    (folder / "ml-100k.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                                         + "".join(f"{k + 1}\t{title}\t1995\t{'Comedy' if k % 2 else 'Action'}\n"
                                                   for k, title in enumerate(TITLES)))
    rows = [f"{user}\t{(user + j) % 6 + 1}\t{(user + j) % 5 + 1}\t{880000000 + 100 * user + j}\n"
            for user in range(1, 5) for j in range(5)]
    (folder / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                          + "".join(rows))
    for k, color in enumerate(["red", "green", "blue"]):
        Image.new("RGB", POSTER_SIZE, color).save(folder / "posters" / f"{k + 1}.jpg")
    (folder / "ml100k_to_ml1m_posters.csv").write_text(
        "ml100k_item_id,poster_file\n" + "".join(f"{k + 1},{f'posters/{k + 1}.jpg' if k < 3 else ''}\n"
                                                 for k in range(6)))
    (folder / "PROVENANCE.md").write_text(f"# tiny ml-100k-posters: provenance\n\nSynthetic rows.\n\n## Sources\n\n"
                                          f"Written by tests/test_push_to_hub.py.\n\n## Licence\n\n{LICENCE}\n")


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_tokenizer):
    """A data folder, its processed DatasetDict, and a checkpoint folder as recipes/train.py leaves it."""
    work = tmp_path_factory.mktemp("push")
    data_dir = work / "data"
    _write_tiny_ml100k(data_dir / "ml-100k-posters")
    dataset_dict = load_unimp_dataset("ml-100k-posters", data_dir)
    items = items_by_id(dataset_dict["items"])
    processor = UniMPProcessor.from_catalogue(copy.deepcopy(tiny_tokenizer), list(items),
                                              [item["title"] for item in items.values()],
                                              [item["image"] for item in items.values()], image_size=32)
    model = make_tiny_model(processor, gate=0.5)  # open gates: images move the scores
    metrics = evaluate_recommendation(model, processor, dataset_dict, split="test", ks=(1, 3))
    metrics.update(dataset="ml-100k-posters", protocol="leave_one_out", tasks=["rec"], split="test", global_step=3)
    checkpoint = work / "checkpoint"
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    (checkpoint / "metrics.json").write_text(json.dumps(metrics))
    (checkpoint / "training_config.yaml").write_text(TRAINING_CONFIG)
    folder = data_dir / "ml-100k-posters"
    # Both input forms: catalogue ids, and an item dict whose image is a poster file.
    histories = [["1", "2", "3"], ["4", {"item_id": "5", "title": "Copycat", "image": str(folder / "posters/1.jpg")}]]
    return {"work": work, "data_dir": data_dir, "folder": folder, "checkpoint": checkpoint, "metrics": metrics,
            "histories": histories}


@pytest.fixture(scope="module")
def expected(source):
    """The local checkpoint's recommendations (in-library folder path)."""
    recommend = pipeline("unimp-recommend", model=str(source["checkpoint"]), device="cpu")
    return recommend(source["histories"], top_k=6)


PUSH_DRIVER = """\
import json, runpy, sys
for argv in json.loads(sys.argv[1]):  # each run is `python -m recipes.push_to_hub ARGV`
    sys.argv = ["push_to_hub", *argv]
    runpy.run_module("recipes.push_to_hub", run_name="__main__", alter_sys=True)
"""

CLIENT = """\
import json, sys
root, histories = sys.argv[1], json.loads(sys.argv[2])
result = {}
if sys.argv[3] == "package":
    import modeling_unimp  # registers the Auto classes and the "unimp-recommend" task
from transformers import AutoModel, AutoProcessor, pipeline
remote = {"trust_remote_code": True} if sys.argv[3] == "remote" else {}
model = AutoModel.from_pretrained("org/unimp", **remote)
processor = AutoProcessor.from_pretrained("org/unimp", **remote)
result["classes"] = [type(model).__module__, type(processor).__module__]
trusted = pipeline("unimp-recommend", model="org/unimp", trust_remote_code=True, device="cpu")
result["trusted_module"] = type(trusted).__module__
result["trusted"] = trusted(histories, top_k=6, image_root=root)
if sys.argv[3] == "package":
    auto = pipeline("unimp-recommend", model=model, processor=processor, device="cpu")
else:  # without the package the task is unknown to transformers: build the repo's pipeline class directly
    auto = type(trusted)(model=model, processor=processor, device="cpu")
result["auto_classes"] = auto(histories, top_k=6, image_root=root)
if sys.argv[3] == "package":
    installed = pipeline("unimp-recommend", model="org/unimp", pipeline_class=modeling_unimp.UniMPRecommendPipeline,
                         device="cpu")
    result["installed_module"] = type(installed.model).__module__
    result["installed"] = installed(histories, top_k=6, image_root=root)
    untrusted = pipeline("unimp-recommend", model="org/unimp", device="cpu")  # the package's pipeline (issue 15)
    result["untrusted_module"] = type(untrusted).__module__
    result["untrusted"] = untrusted(histories, top_k=6, image_root=root)
    in_library = pipeline("unimp-recommend", model="org/unimp", revision="dev", device="cpu")  # no custom_pipelines
    result["in_library_module"] = type(in_library.model).__module__
    result["in_library"] = in_library(histories, top_k=6, image_root=root)
    from datasets import load_dataset
    users, items = load_dataset("org/unimp-ml100k"), load_dataset("org/unimp-ml100k", "items")["items"]
    result["splits"] = {name: len(split) for name, split in users.items()}
    result["splits"]["items"] = len(items)
    result["item_ids"] = list(items["item_id"])
    result["image_sizes"] = [None if image is None else list(image.size) for image in items["image"]]
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def published(fake_hub, source):
    """Push with recipes/push_to_hub.py (main + a model-only branch), then load from two fresh client processes."""
    work, timings = source["work"], {}
    (work / "push.py").write_text(PUSH_DRIVER)
    (work / "client.py").write_text(CLIENT)
    runs = [
        [str(source["checkpoint"]), MODEL_REPO, "--dataset", "ml-100k-posters", "--data-dir", str(source["data_dir"]),
         "--dataset-repo-id", DATASET_REPO, "--private", "--commit-message", "Publish tiny UniMP"],
        [str(source["checkpoint"]), MODEL_REPO, "--revision", "dev", "--no-custom-pipeline", "--data-dir",
         str(source["data_dir"]), "--private", "--commit-message", "Model only, on dev"],
    ]
    start = time.monotonic()
    pushed = fake_hub.run_python([str(work / "push.py"), json.dumps(runs)], home=work / "push_home", cwd=REPO_ROOT,
                                 timeout=240)
    timings["push"] = time.monotonic() - start
    client_args = [str(source["folder"]), json.dumps(source["histories"])]
    results = {}
    for mode in ("package", "remote"):
        start = time.monotonic()
        if mode == "package":
            args = [str(work / "client.py"), *client_args, mode]
        else:
            code = without_package_prelude() + f"sys.argv = ['client.py', *{[*client_args, mode]!r}]\n" + CLIENT
            args = ["-I", "-S", "-c", code]
        proc = fake_hub.run_python(args, home=work / f"{mode}_home", cwd=work, timeout=240)
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        timings[mode] = time.monotonic() - start
    print("fake-hub push/pull: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()), file=sys.stderr)
    return {"push_log": pushed.stdout, **results}


def _assert_same_results(first, second, atol=1e-5):  # other processes may pick other CPU kernels
    assert [r["item_id"] for r in first] == [r["item_id"] for r in second]
    for a, b in zip(first, second):
        assert a["score"] == pytest.approx(b["score"], abs=atol)
        assert (a["title"], a["image"]) == (b["title"], b["image"])


# ------------------------------------------------------------------ what lands on the Hub
def test_model_repo_holds_weights_remote_code_processor_catalogue_and_card(fake_hub, published):
    files = set(fake_hub.list_files(MODEL_REPO))
    assert {"model.safetensors", "config.json", "configuration_unimp.py", "modeling_unimp.py", "pipeline_unimp.py",
            "processing_unimp.py", "prompt_templates.py", "processor_config.json", "tokenizer.json",
            "tokenizer_config.json", "README.md", "LICENSE.md", "metrics.json"} <= files
    assert fake_hub.is_private(MODEL_REPO) and fake_hub.is_lfs(MODEL_REPO, "model.safetensors")
    config = json.loads(fake_hub.read_file(MODEL_REPO, "config.json"))
    assert config["auto_map"]["AutoModel"] == "modeling_unimp.UniMPForConditionalGeneration"
    assert config["custom_pipelines"]["unimp-recommend"]["impl"] == "pipeline_unimp.UniMPRecommendPipeline"
    processor_config = json.loads(fake_hub.read_file(MODEL_REPO, "processor_config.json"))
    assert processor_config["item_ids"] == ["1", "2", "3", "4", "5", "6"]
    assert processor_config["item_images"] == ["posters/1.jpg", "posters/2.jpg", "posters/3.jpg", None, None, None]
    assert "Publish tiny UniMP" in fake_hub.commit_titles(MODEL_REPO)
    assert fake_hub.unhandled == [] and fake_hub.errors == []


def test_revision_push_goes_to_its_branch_and_leaves_main_alone(fake_hub, published):
    assert set(fake_hub.branches(MODEL_REPO)) == {"main", "dev"}
    assert fake_hub.commit_titles(MODEL_REPO, revision="dev")[0] == "Model only, on dev"
    dev_config = json.loads(fake_hub.read_file(MODEL_REPO, "config.json", revision="dev"))
    assert "custom_pipelines" not in dev_config  # --no-custom-pipeline: the in-library scheme
    assert "custom_pipelines" in json.loads(fake_hub.read_file(MODEL_REPO, "config.json"))


def test_model_card_has_metadata_metrics_table_training_config_and_usage_snippet(fake_hub, source, published):
    card = fake_hub.read_file(MODEL_REPO, "README.md").decode()
    metadata, body = card.split("---\n", 2)[1:]
    for line in ("library_name: transformers", "pipeline_tag: image-text-to-text", "license: other",
                 f"- {DATASET_REPO}", "model-index:", "type: hr@1", "type: masked_ndcg@3"):
        assert line in metadata, line
    metrics = source["metrics"]
    unimp = " | ".join(f"{metrics['unimp'][key]:.4f}" for key in metrics["unimp"])
    pop = " | ".join(f"{metrics['pop'][key]:.4f}" for key in metrics["pop"])
    assert f"| UniMP | {unimp} |" in body and f"| Popularity | {pop} |" in body
    assert 'pipeline("unimp-recommend", model="org/unimp", trust_remote_code=True)' in body
    assert "recommend(['1', '2', '3'], top_k=10)  # Toy Story, GoldenEye, Four Rooms" in body
    assert TRAINING_CONFIG.strip() in body and "**Optimizer steps:** 3" in body
    assert "> " + LICENCE in body and "More Information Needed" not in card and "{{" not in card


def test_dataset_repo_reads_back_with_images_licence_and_provenance(fake_hub, published):
    package = published["package"]
    assert package["splits"] == {"train": 4, "validation": 4, "test": 4, "items": 6}
    assert package["item_ids"] == ["1", "2", "3", "4", "5", "6"]
    assert package["image_sizes"] == [list(POSTER_SIZE)] * 3 + [None] * 3
    assert fake_hub.is_private(DATASET_REPO, repo_type="dataset")
    card = fake_hub.read_file(DATASET_REPO, "README.md", repo_type="dataset").decode()
    assert "configs:" in card and "dataset_info:" in card  # datasets' own metadata survives the card
    assert "license: other" in card and LICENCE in card and "### Sources" in card
    assert 'load_dataset("org/unimp-ml100k", "items")' in card and "config_name: items" in card
    assert "## What the build dropped\n\nNothing: every source row is in the splits." in card  # issue 16


# ------------------------------------------------------------------ loading it back
def test_auto_classes_and_every_pipeline_scheme_with_the_package_recommend_like_the_local_checkpoint(
        published, expected):
    package = published["package"]
    assert package["classes"] == ["modeling_unimp.modeling_unimp", "modeling_unimp.processing_unimp"]
    assert package["installed_module"] == package["in_library_module"] == "modeling_unimp.modeling_unimp"
    # with the package imported its registered pipeline serves, trusted or not (issue 15); the repo's copy of
    # pipeline_unimp.py runs only without the package (next test)
    assert package["trusted_module"] == package["untrusted_module"] == "modeling_unimp.pipeline_unimp"
    for key in ("auto_classes", "installed", "trusted", "untrusted", "in_library"):
        for remote, local in zip(package[key], expected):
            _assert_same_results(remote, local)


def test_trust_remote_code_without_the_package_recommends_like_the_local_checkpoint(published, expected):
    remote = published["remote"]
    assert all(module.startswith("transformers_modules.") for module in remote["classes"])
    assert remote["trusted_module"].startswith("transformers_modules.")
    for key in ("auto_classes", "trusted"):
        for pulled, local in zip(remote[key], expected):
            _assert_same_results(pulled, local)


# ------------------------------------------------------------------ refusals and the dry run (no Hub)
def test_data_whose_terms_forbid_redistribution_is_only_pushed_private(source):
    argv = [str(source["checkpoint"]), "org/x", "--dataset", "ml-100k-posters", "--data-dir",
            str(source["data_dir"]), "--dataset-repo-id", "org/x-data", "--dry-run"]
    with pytest.raises(ValueError, match="forbid redistributing"):
        push_to_hub.main(argv)
    with pytest.raises(SystemExit):
        push_to_hub.main(argv[:6])  # --dataset without --dataset-repo-id: no guessed repo


def test_dry_run_in_library_scheme_renders_the_card_and_pushes_nothing(source, tmp_path):
    result = push_to_hub.main([str(source["checkpoint"]), "org/x", "--dry-run", "--private", "--no-custom-pipeline",
                               "--item-image-paths", "drop", "--data-dir", str(source["data_dir"]),
                               "--export-dir", str(tmp_path)])
    assert result["dry_run"] and "model_commit" not in result
    assert "custom_pipelines" not in json.loads((tmp_path / "config.json").read_text())
    assert json.loads((tmp_path / "processor_config.json").read_text())["item_images"] == [None] * 6
    card = (tmp_path / "README.md").read_text()
    assert 'pipeline("unimp-recommend", model="org/x")' in card and "trust_remote_code=True)" not in card
    assert "| UniMP |" in card and "> " + LICENCE in card  # the terms of metrics.json's dataset


@pytest.mark.parametrize("name", ["ml-100k-posters", "hm-sample", "amazon-mi-2014-5core", "amazon-2018-small-5core"])
def test_licence_sections_of_the_shared_data_read_as_no_redistribution(data_dir, name):
    provenance, licence = push_to_hub.read_provenance(data_dir / name / "PROVENANCE.md")
    assert provenance and licence and push_to_hub.forbids_redistribution(licence)


@pytest.mark.parametrize("terms, forbidden", [
    ("CC BY 4.0: you may copy and redistribute the material with attribution.", False),
    ("Redistribution is not permitted.", True),
    ("Research use only; do not\nredistribute.", True),
])
def test_forbids_redistribution_reads_the_terms(terms, forbidden):
    assert push_to_hub.forbids_redistribution(terms) is forbidden
