"""recipes/evaluate.py: ranks from score blocks, memory O(batch x N), equal to the full-matrix path (issue 13)."""

import copy

import pytest
import torch
from conftest import make_tiny_model

from modeling_unimp import UniMPProcessor, catalogue_cache, score_prompts
from processing import metrics_unimp
from recipes import evaluate

NUM_ITEMS, USERS, BATCH = 23, 7, 3


@pytest.fixture
def setting(tiny_tokenizer):
    """A tiny model over NUM_ITEMS items, USERS rendered prompts and a dict-of-rows dataset (train and test)."""
    item_ids = [f"m{k}" for k in range(NUM_ITEMS)]
    processor = UniMPProcessor.from_catalogue(copy.deepcopy(tiny_tokenizer), item_ids, image_size=32)
    model = make_tiny_model(processor)
    rows, examples = [], []
    for n in range(USERS):  # histories of 2..8 items: different prompt lengths, so the batches are reordered
        history = [(3 * n + 5 * k) % NUM_ITEMS for k in range(n + 2)]
        target = next(k for k in range(n, n + NUM_ITEMS) if k % NUM_ITEMS not in history) % NUM_ITEMS
        rows.append({"user_id": f"u{n}", "history_item_ids": [item_ids[k] for k in history],
                     "target_item_id": item_ids[target]})
        text = "".join(f"<answer> <item_{k}> Title Heat <|endofchunk|> " for k in history)
        examples.append({"text": text + "What next? <answer>", "images": [], "user_id": f"u{n}",
                         "target_index": target})
    train = [{"user_id": "t", "history_item_ids": item_ids[:5] + item_ids[:2], "target_item_id": item_ids[1]}]
    return model, processor, {"train": train, "test": rows}, examples


def _full_matrix_results(model, processor, dataset_dict, examples, ks):
    """What `evaluate_recommendation` computed before it streamed: every score of every user held at once."""
    targets = [example["target_index"] for example in examples]
    users = [example["user_id"] for example in examples]
    scores = score_prompts(model, processor, examples, batch_size=BATCH)
    history = evaluate.training_history_mask(dataset_dict, processor, users, "test")
    popularity = evaluate.popularity_scores(dataset_dict, processor).expand(len(examples), -1)
    ranks = {"none": metrics_unimp.rank_of_targets(scores, torch.tensor(targets)).tolist(),
             "history": metrics_unimp.rank_of_targets(scores, torch.tensor(targets), exclude=history).tolist()}
    return scores, ranks, {"unimp": evaluate.ranking_metrics(scores, targets, ks),
                           "unimp_masked": evaluate.ranking_metrics(scores, targets, ks, exclude=history),
                           "pop": evaluate.ranking_metrics(popularity, targets, ks),
                           "pop_masked": evaluate.ranking_metrics(popularity, targets, ks, exclude=history)}


def test_streamed_ranks_and_metrics_equal_the_full_matrix_path(setting):
    model, processor, dataset_dict, examples = setting
    ks = (1, 3, 5)
    scores, full_ranks, full_metrics = _full_matrix_results(model, processor, dataset_dict, examples, ks)
    assert len(set(full_ranks["none"])) > 2 and full_ranks["history"] != full_ranks["none"]  # nothing degenerate
    results = evaluate.evaluate_recommendation(model, processor, dataset_dict, split="test", ks=ks,
                                               batch_size=BATCH, examples=examples, return_ranks=True)
    assert results["ranks"]["none"] == full_ranks["none"]  # exact: same scores, same comparisons
    assert results["ranks"]["history"] == full_ranks["history"]
    assert results["ranks"]["user_ids"] == [example["user_id"] for example in examples]
    assert {key: results[key] for key in full_metrics} == full_metrics
    assert set(results) == {"num_users", "eval_users_per_second", "unimp", "unimp_masked", "pop", "pop_masked",
                            "ranks"}
    # the running top-k is the full matrix's top-k, row for row
    blocks = catalogue_cache.iter_prompt_scores(model, processor, examples, batch_size=BATCH)
    histories = evaluate.history_item_indices(dataset_dict, processor, results["ranks"]["user_ids"], "test")
    streamed = evaluate.streamed_target_ranks(blocks, [e["target_index"] for e in examples], histories, top_k=5)
    assert torch.equal(streamed["top_k"], scores.topk(5, dim=-1).indices)
    assert streamed["none"].tolist() == full_ranks["none"]


def test_evaluation_never_holds_more_than_a_batch_of_scores(setting, monkeypatch):
    model, processor, dataset_dict, examples = setting
    ranked_shapes, scored_shapes = [], []
    rank_of_targets, score_items = evaluate.rank_of_targets, type(model).score_items

    def spy_rank(scores, *args, **kwargs):
        ranked_shapes.append(tuple(scores.shape))
        return rank_of_targets(scores, *args, **kwargs)

    def spy_score(self, *args, **kwargs):
        out = score_items(self, *args, **kwargs)
        scored_shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(evaluate, "rank_of_targets", spy_rank)
    monkeypatch.setattr(type(model), "score_items", spy_score)

    def no_full_matrix(*args, **kwargs):
        raise AssertionError("evaluate_recommendation built the (users, num_items) score matrix")

    monkeypatch.setattr(evaluate, "score_prompts", no_full_matrix)
    monkeypatch.setattr(evaluate, "score_examples", no_full_matrix)
    monkeypatch.setattr(evaluate, "training_history_mask", no_full_matrix)
    results = evaluate.evaluate_recommendation(model, processor, dataset_dict, split="test", batch_size=BATCH,
                                               examples=examples)
    assert results["num_users"] == USERS
    assert scored_shapes == [(BATCH, NUM_ITEMS)] * (USERS // BATCH) + [(USERS % BATCH, NUM_ITEMS)]
    # UniMP and Pop, each with nothing masked and with the history masked: batch-sized blocks only
    assert len(ranked_shapes) == 4 * len(scored_shapes)
    assert max(rows for rows, _ in ranked_shapes) == BATCH and {n for _, n in ranked_shapes} == {NUM_ITEMS}


def test_streamed_ranks_refuse_a_user_without_scores():
    blocks = [([0], torch.tensor([[0.5, 0.1, 0.9]]))]
    with pytest.raises(ValueError, match="1 of 2 users had no score block"):
        evaluate.streamed_target_ranks(blocks, [0, 2], [[1], [0]])


def test_scaling_benchmark_measures_both_evaluation_paths_alike():
    """benchmarks/scaling.py --skip-train: the old (full-matrix) and the streamed path give the same ranks."""
    from benchmarks import scaling

    threads = torch.get_num_threads()
    try:
        row = scaling.measure(300, 5, 1, 1, eval_paths=("full", "streamed"), eval_batch=2, skip_train=True)
    finally:
        torch.set_num_threads(threads)
    assert row["eval_paths_agree"] is True and set(row["eval"]) == {"full", "streamed"}
    assert "train_step_s" not in row and row["eval_users_per_s"] == row["eval"]["streamed"]["users_per_s"]
    assert "| 300 | streamed | 2 |" in scaling.table([row])
