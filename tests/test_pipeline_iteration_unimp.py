"""UniMPRecommendPipeline through the base `Pipeline.__call__` (issue 15): batching, `KeyDataset` columns,
generators, generation kwargs, and the `exclude_history` default recorded in the processor."""

import copy

import pytest
from conftest import make_tiny_model
from transformers import pipeline
from transformers.pipelines.pt_utils import KeyDataset

from modeling_unimp import UniMPProcessor

ITEM_IDS = [f"m{k}" for k in range(6)]
HISTORIES = [["m0", "m1"], ["m2"], ["m3", "m4", "m5"]]


@pytest.fixture(scope="module")
def recommend(tiny_tokenizer):
    processor = UniMPProcessor.from_catalogue(copy.deepcopy(tiny_tokenizer), ITEM_IDS, [f"Title {k}" for k in
                                              range(6)], image_size=32)
    model = make_tiny_model(processor)
    return pipeline("unimp-recommend", model=model, processor=processor, device="cpu")


def _ids(results):
    return [[r["item_id"] for r in rows] for rows in results]


def test_key_dataset_generator_and_batching_give_the_results_of_a_list(recommend):
    datasets = pytest.importorskip("datasets")
    expected = recommend(HISTORIES, top_k=3, exclude_history=False)
    assert _ids(expected) == [_ids([recommend(h, top_k=3, exclude_history=False)])[0] for h in HISTORIES]
    column = KeyDataset(datasets.Dataset.from_dict({"history": HISTORIES}), "history")
    from_dataset = list(recommend(column, top_k=3, batch_size=2, exclude_history=False))
    from_generator = list(recommend((h for h in HISTORIES), top_k=3, exclude_history=False))
    for results in (from_dataset, from_generator):
        assert _ids(results) == _ids(expected)
        for rows, reference in zip(results, expected):
            assert [r["score"] for r in rows] == pytest.approx([r["score"] for r in reference], abs=1e-5)


def test_mixed_tasks_in_one_batch_and_generation_kwargs_pass_through(recommend):
    records = [{"history": ["m0"], "task": "search", "query": "Title"}, {"history": ["m1", "m2"]}]
    batched = recommend(records, top_k=2, batch_size=2)
    assert _ids(batched) == _ids([recommend(record, top_k=2) for record in records])
    exp = recommend({"history": [{"item_id": "m0", "rating": 4}], "task": "exp", "target": "m1"},
                    temperature=0.7, max_new_tokens=3)
    assert exp["rating_token"] in range(1, 6) and 1.0 <= exp["rating"] <= 5.0
    with pytest.raises(ValueError):  # an unknown generate kwarg reaches generate, which refuses it
        recommend({"history": [{"item_id": "m0", "rating": 4}], "task": "exp", "target": "m1"},
                  not_a_generate_kwarg=1, max_new_tokens=2)


def test_exclude_history_default_comes_from_the_processor_and_stays_overridable(recommend):
    processor, history = recommend.processor, ["m0", "m1", "m2"]
    assert processor.has_repeat_interactions is None and processor.default_exclude_history is False
    assert set(_ids([recommend(history, top_k=6)])[0]) == set(ITEM_IDS)  # unknown: seen items stay rankable
    processor.has_repeat_interactions = False
    try:
        assert not set(_ids([recommend(history, top_k=6)])[0]) & set(history)
        assert set(_ids([recommend(history, top_k=6, exclude_history=False)])[0]) == set(ITEM_IDS)
    finally:
        processor.has_repeat_interactions = None


def test_training_split_without_repeats_records_the_exclude_default(tiny_processor):
    datasets = pytest.importorskip("datasets")
    from recipes.common import record_repeat_interactions

    def split(histories, targets):
        return {"train": datasets.Dataset.from_dict({"history_item_ids": histories, "target_item_id": targets})}

    assert record_repeat_interactions(tiny_processor, split([["m1"], ["m1", "m2"]], ["m2", "m3"])) is False
    assert tiny_processor.default_exclude_history is True
    assert record_repeat_interactions(tiny_processor, split([["m1"], ["m1", "m2"]], ["m2", "m1"])) is True
    assert tiny_processor.default_exclude_history is False
