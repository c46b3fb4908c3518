"""Issue 15: your own data through `dataset:` (a folder, a pushed Hub id), half-star ratings, and what every folder
recipes.train writes carries (processor in checkpoint-N/, custom_pipelines, generation config, TensorBoard logs)."""

import json
import textwrap
from pathlib import Path

import pytest
from conftest import REPO_ROOT, run_without_package
from PIL import Image

from processing.datasets_unimp import load_unimp_dataset, rating_to_token_scale
from recipes import train

NUM_USERS, NUM_ITEMS, PER_USER = 6, 8, 5
HALF_STARS = [0.5, 1.0, 2.5, 3.5, 4.5, 5.0]


def write_own_data(folder: Path, *, parquet: bool = False) -> list[float]:
    """A folder in build_generic's schema: items with title/genres/image, interactions with half-star ratings;
    returns the ratings in file order."""
    import pandas as pd

    (folder / "images").mkdir(parents=True)
    items, interactions = [], []
    for k in range(NUM_ITEMS):
        Image.new("RGB", (16, 16), (30 * k, 200 - 20 * k, 90)).save(folder / "images" / f"{k}.png")
        items.append({"item_id": f"i{k}", "title": f"Film {k}", "category": "Drama" if k % 2 else "Comedy",
                      "attributes": {"genres": "Drama" if k % 2 else "Comedy"}, "image": f"images/{k}.png"})
    for user in range(NUM_USERS):
        for step in range(PER_USER):
            interactions.append({"user_id": f"u{user}", "item_id": f"i{(user + step) % NUM_ITEMS}",
                                 "timestamp": 1_000_000 + 60 * step,
                                 "rating": HALF_STARS[(user + step) % len(HALF_STARS)]})
    for name, rows in (("items", items), ("interactions", interactions)):
        if parquet:
            pd.DataFrame(rows).to_parquet(folder / f"{name}.parquet")
        else:
            (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return [row["rating"] for row in interactions]


def test_half_star_ratings_map_to_the_rating_tokens_on_the_declared_scale(tmp_path):
    assert [rating_to_token_scale(r, 0.5, 5.0) for r in (0.5, 1.0, 2.5, 2.75, 3.5, 4.5, 5.0)] == [1, 1, 3, 3, 4, 5, 5]
    assert [rating_to_token_scale(r, 1, 5) for r in range(1, 6)] == [1, 2, 3, 4, 5]
    write_own_data(tmp_path / "data", parquet=True)
    with pytest.raises(ValueError, match=r"interactions\.parquet:1: field 'rating' value 0\.5 .*rating_scale"):
        load_unimp_dataset(str(tmp_path / "data"))  # the default scale is integers 1-5: the first row names it
    dataset_dict = load_unimp_dataset(str(tmp_path / "data"), rating_scale=[0.5, 5.0])
    user = next(row for row in dataset_dict["test"] if row["user_id"] == "u0")
    # u0 rated 0.5, 1.0, 2.5, 3.5 (history) then 4.5 (target)
    assert user["history_ratings"] == [1, 1, 3, 4] and user["target_rating"] == 5
    assert dataset_dict["items"][0]["image"].size == (16, 16)  # relative image paths resolve against the folder
    with pytest.raises(ValueError, match="outside rating_scale"):
        load_unimp_dataset(str(tmp_path / "data"), rating_scale=[1.0, 5.0])
    with pytest.raises(ValueError, match="low < high"):
        load_unimp_dataset(str(tmp_path / "data"), rating_scale=[5.0, 0.5])


def test_an_unknown_dataset_names_the_three_forms(tmp_path):
    with pytest.raises(ValueError, match="a folder holding interactions"):
        load_unimp_dataset("no such dataset")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="needs exactly one interactions file"):
        load_unimp_dataset(str(tmp_path / "empty"))


def _train_args(folder: Path, output_dir: Path, *extra: str) -> list[str]:
    return [str(REPO_ROOT / "recipes" / "configs" / "ml100k_tiny.yaml"), f"dataset={folder}",
            f"output_dir={output_dir}", "rating_scale=[0.5, 5.0]", "tasks=[rec, exp]", "max_steps=2",
            "eval_steps=1", "save_steps=1", "logging_steps=1", "per_device_train_batch_size=4",
            "max_history_items=3", "content_history_items=3", "num_windows_per_user=1", "tokenizer_vocab_size=300",
            "max_train_seconds=null", "warmup_steps=0", "disable_tqdm=true", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """recipes.train on a folder of own data (half stars), with TensorBoard, checkpoints at steps 1 and 2."""
    work = tmp_path_factory.mktemp("own")
    write_own_data(work / "data")
    output = work / "run"
    metrics = train.main(*train.parse_args(_train_args(work / "data", output, "report_to=tensorboard")))
    return {"work": work, "output": output, "metrics": metrics}


def test_train_recipe_trains_and_evaluates_on_a_folder_of_own_data(trained):
    metrics = trained["metrics"]
    assert metrics["dataset"].endswith("data") and metrics["rating_scale"] == [0.5, 5.0]
    assert metrics["global_step"] == 2 and metrics["num_users"] == NUM_USERS
    assert set(metrics["unimp"]) >= {"hr@10", "ndcg@10"} and "mae" in metrics["exp"]["unimp_rating"]


def test_every_checkpoint_loads_its_processor_and_declares_the_pipeline(trained):
    from transformers import AutoProcessor, GenerationConfig

    from modeling_unimp import UniMPProcessor
    from modeling_unimp.prompt_templates import END_OF_CHUNK_TOKEN

    folders = sorted(trained["output"].glob("checkpoint-*")) + [trained["output"]]
    assert len(folders) >= 2
    for folder in folders:
        processor = AutoProcessor.from_pretrained(folder)
        assert isinstance(processor, UniMPProcessor) and processor.num_items == NUM_ITEMS, folder
        config = json.loads((folder / "config.json").read_text())
        assert config["custom_pipelines"]["unimp-recommend"]["impl"] == "pipeline_unimp.UniMPRecommendPipeline"
        assert config["custom_pipelines"]["unimp-recommend"]["pt"] == ["AutoModelForImageTextToText"]
        assert (folder / "pipeline_unimp.py").is_file() and (folder / "catalogue_cache.py").is_file(), folder
        generation = GenerationConfig.from_pretrained(folder)
        end_of_chunk = processor.tokenizer.convert_tokens_to_ids(END_OF_CHUNK_TOKEN)
        assert end_of_chunk in generation.eos_token_id and processor.tokenizer.eos_token_id in generation.eos_token_id
        assert generation.max_new_tokens == 64


def test_a_bare_generate_stops_at_the_end_of_an_answer_without_a_max_length_warning(trained, recwarn):
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(trained["output"]).eval()
    processor = AutoProcessor.from_pretrained(trained["output"])
    inputs = processor(text=["<item_0> <|endofchunk|> What next? <answer>"], images=[[]], return_tensors="pt")
    output = model.generate(**inputs)
    assert output.shape[1] - inputs["input_ids"].shape[1] <= 64
    assert not [w for w in recwarn if "max_length" in str(w.message)]


def test_trained_folder_runs_the_pipeline_with_and_without_the_package(trained):
    from transformers import pipeline

    from modeling_unimp import UniMPRecommendPipeline

    folder = trained["output"]
    in_library = pipeline("unimp-recommend", model=str(folder), device="cpu")  # no trust_remote_code needed
    assert type(in_library) is UniMPRecommendPipeline
    expected = in_library(["i0", "i2"], top_k=3)
    script = textwrap.dedent(f"""
        import importlib.util, json
        assert importlib.util.find_spec("modeling_unimp") is None
        from transformers import pipeline
        recommend = pipeline("unimp-recommend", model={str(folder)!r}, trust_remote_code=True, device="cpu")
        print(type(recommend).__module__)
        print(json.dumps(recommend(["i0", "i2"], top_k=3)))
        """)
    result = run_without_package(script, cwd=trained["work"])
    module, output = result.stdout.strip().splitlines()[-2:]
    assert module.startswith("transformers_modules.")
    remote = json.loads(output)
    assert [r["item_id"] for r in remote] == [r["item_id"] for r in expected]
    assert [r["score"] for r in remote] == pytest.approx([r["score"] for r in expected], abs=1e-5)


def test_report_to_tensorboard_writes_event_files_with_the_training_loss(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(trained["output"].rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file under {trained['output']}"
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert "train/loss" in accumulator.Tags()["scalars"]
    assert [event.step for event in accumulator.Scalars("train/loss")] == [1, 2]


def test_training_curve_has_labelled_axes_and_a_second_axis_for_the_validation_metric():
    import matplotlib.pyplot as plt

    from recipes.common import training_curve_figure

    history = [{"step": 1, "loss": 4.0}, {"step": 1, "eval_ndcg@10": 0.1}, {"step": 2, "loss": 3.0},
               {"step": 2, "eval_ndcg@10": 0.3}]
    figure = training_curve_figure(history)
    try:
        loss_axis, metric_axis = figure.axes
        assert (loss_axis.get_xlabel(), loss_axis.get_ylabel()) == ("training step", "training loss")
        assert metric_axis.get_ylabel() == "validation eval_ndcg@10"
        assert list(metric_axis.lines[0].get_ydata()) == [0.1, 0.3] and list(loss_axis.lines[0].get_ydata()) == [4, 3]
        assert len(loss_axis.get_yticks()) > 1 and len(metric_axis.get_yticks()) > 1
    finally:
        plt.close(figure)
    only_loss = training_curve_figure([{"step": 1, "loss": 2.0}])
    try:
        assert len(only_loss.axes) == 1  # no validation logged: no empty second axis
    finally:
        plt.close(only_loss)


HUB_DRIVER = """\
import json, sys
from processing.datasets_unimp import load_unimp_dataset
from recipes.push_to_hub import _dataset_configs
if sys.argv[1] == "push":  # the layout recipes/push_to_hub.py --dataset writes: user splits + config "items"
    dataset_dict = load_unimp_dataset(sys.argv[2], rating_scale=[0.5, 5.0])
    for config_name, splits in _dataset_configs(dataset_dict).items():
        splits.push_to_hub("org/own-data", config_name=config_name, private=True)
else:
    from recipes import train
    metrics = train.main(*train.parse_args(json.loads(sys.argv[2])))
    print(json.dumps({"num_users": metrics["num_users"], "global_step": metrics["global_step"],
                      "hr@10": metrics["unimp"]["hr@10"], "dataset": metrics["dataset"]}))
"""


@pytest.mark.slow  # two client processes against the loopback Hub and a training run: minutes on 2 cores
def test_train_recipe_trains_on_a_dataset_id_pushed_to_the_loopback_hub(tmp_path):
    from fake_hub import FakeHub

    write_own_data(tmp_path / "data")
    (tmp_path / "driver.py").write_text(HUB_DRIVER)
    args = _train_args("org/own-data", tmp_path / "run", "max_steps=1", "tasks=[rec]", "rating_scale=null")
    with FakeHub() as hub:
        hub.run_python([str(tmp_path / "driver.py"), "push", str(tmp_path / "data")], home=tmp_path / "home",
                       cwd=REPO_ROOT, timeout=240)
        assert "org/own-data" in hub.repo_ids("dataset")
        proc = hub.run_python([str(tmp_path / "driver.py"), "train", json.dumps(args)], home=tmp_path / "home",
                              cwd=REPO_ROOT, timeout=600)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"num_users": NUM_USERS, "global_step": 1, "hr@10": result["hr@10"], "dataset": "org/own-data"}
    assert 0.0 <= result["hr@10"] <= 1.0
    assert (tmp_path / "run" / "model.safetensors").is_file()
    processor = json.loads((tmp_path / "run" / "processor_config.json").read_text())
    assert len(processor["item_ids"]) == NUM_ITEMS
