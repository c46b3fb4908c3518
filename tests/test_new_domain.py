"""New-domain transfer (issue 12, benchmarks/new_domain.py): target items added to a trained content model, ranked
over the target catalogue only; popularity; argument parsing; contract lines; §1.1 untouched by amazon-2018 lines."""

import copy
import sys

import pytest
import torch
from conftest import REPO_ROOT, make_tiny_config, set_gates
from datasets import Dataset, DatasetDict

from modeling_unimp import UniMPForConditionalGeneration, UniMPProcessor
from modeling_unimp.item_content_unimp import attach_item_content
from processing.datasets_unimp import ITEM_FEATURES, USER_ROW_FEATURES
from processing.metrics_unimp import rank_of_targets

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import new_domain  # noqa: E402
import report  # noqa: E402
import results as contract  # noqa: E402

SOURCE_IDS = ["s0", "s1", "s2"]
SOURCE_TITLES = ["Guitar strings", "Gift card birthday", "Drum sticks"]
# t0 and t3 have one text (the twin pair); t1 has the text of source item s1
TARGET_TITLES = {"t0": "Magazine cooking", "t1": "Gift card birthday", "t2": "Magazine travel",
                 "t3": "Magazine cooking", "t4": "Gift card wedding"}
SEQUENCES = {"u0": ["t1", "t2", "t4", "t3", "t0"],  # test target t0; its twin t3 is the validation item
             "u1": ["t0", "t4", "t2", "t3", "t1"],
             "u2": ["t2", "t0", "t1", "t4", "t3"]}


def _target_dataset() -> DatasetDict:
    items = {"item_id": list(TARGET_TITLES), "title": list(TARGET_TITLES.values()),
             "category": [None] * len(TARGET_TITLES),
             "attributes": [[{"key": "Title", "value": title}] for title in TARGET_TITLES.values()],
             "image": [None] * len(TARGET_TITLES)}
    splits = {}
    for split, cut in (("train", 2), ("validation", 3), ("test", 4)):  # leave-one-out: history = items[:cut]
        rows = {name: [] for name in USER_ROW_FEATURES}
        for n, (user, sequence) in enumerate(SEQUENCES.items()):
            rows["user_id"].append(user)
            rows["history_item_ids"].append(sequence[:cut])
            rows["history_timestamps"].append(list(range(cut)))
            rows["history_ratings"].append([5] * cut)
            rows["history_explanations"].append([None] * cut)
            rows["history_source_rows"].append([10 * n + k for k in range(cut)])
            rows["target_item_id"].append(sequence[cut])
            rows["target_timestamp"].append(cut)
            rows["target_rating"].append(5)
            rows["target_explanation"].append(None)
            rows["target_source_row"].append(10 * n + cut)
        splits[split] = Dataset.from_dict(rows, features=USER_ROW_FEATURES)
    splits["items"] = Dataset.from_dict(items, features=ITEM_FEATURES)
    return DatasetDict(splits)


@pytest.fixture
def transferred(tiny_tokenizer, text_encoder):
    """A tiny "source" content model over 3 source items, with the 5 target items added; (model, processor,
    dataset_dict, candidates)."""
    processor = UniMPProcessor.from_catalogue(copy.deepcopy(tiny_tokenizer), SOURCE_IDS, SOURCE_TITLES,
                                              image_size=32)
    torch.manual_seed(0)
    model = UniMPForConditionalGeneration(make_tiny_config(item_representation="content",
                                                           item_text_feature_dim=16)).eval()
    processor.prepare_model(model)
    set_gates(model, 0.5)
    attach_item_content(model, processor, text_encoder=text_encoder)
    dataset_dict = _target_dataset()
    candidates = new_domain.add_target_catalogue(model, processor, dataset_dict, text_encoder=text_encoder)
    return model, processor, dataset_dict, candidates


def test_target_items_are_added_after_the_source_items_and_rank_within_the_target_catalogue(transferred):
    model, processor, dataset_dict, candidates = transferred
    assert candidates == [3, 4, 5, 6, 7] == new_domain.target_candidates(processor, dataset_dict)
    assert model.config.num_items == processor.num_items == 8
    for split in ("validation", "test"):
        ranked = new_domain.rank_split(model, processor, dataset_dict, split, candidates, batch_size=2)
        assert ranked["user_ids"] == list(SEQUENCES)
        for masking in ("none", "history"):
            assert all(1 <= r <= len(TARGET_TITLES) for r in ranked[masking]), (split, masking, ranked[masking])
        assert all(h <= n for h, n in zip(ranked["history"], ranked["none"]))  # masking only removes competitors


def test_restricted_ranks_equal_ranks_with_every_source_item_at_minus_infinity():
    torch.manual_seed(1)
    scores = torch.randn(6, 9)
    scores[:, 2] = 50.0  # a source item above everything: out of the ranking, it must not count
    candidates = [4, 5, 6, 7, 8]
    targets = [4, 8, 6, 5, 7, 4]
    history = torch.zeros(6, 9, dtype=torch.bool)
    history[0, 5] = history[1, 4] = history[1, 0] = True
    non_candidates = torch.ones(9, dtype=torch.bool)
    non_candidates[candidates] = False
    for exclude in (None, history):
        mask = non_candidates.expand(6, -1) | (exclude if exclude is not None else False)
        expected = rank_of_targets(scores, torch.tensor(targets), exclude=mask)
        assert torch.equal(new_domain.restricted_ranks(scores, targets, candidates, exclude=exclude), expected)
    with pytest.raises(ValueError, match="not candidates"):
        new_domain.restricted_ranks(scores, [2], candidates)


def test_a_source_item_with_the_targets_content_ties_with_it_but_is_not_a_candidate(transferred):
    """t1 has source item s1's text: a content model scores them equally; over the whole vocabulary the tie would
    count against t1 (pessimistic ranks), over the target catalogue it must not."""
    model, processor, dataset_dict, candidates = transferred
    ranked = new_domain.rank_split(model, processor, dataset_dict, "test", candidates)
    from recipes.common import render_examples
    from recipes.evaluate import score_examples

    examples = render_examples(dataset_dict, processor, tasks=["rec"], split="test", task_weights=None)
    scores = score_examples(model, processor, examples)
    s1, t1 = processor.item_index("s1"), processor.item_index("t1")
    assert torch.allclose(scores[:, s1], scores[:, t1])
    user = list(SEQUENCES).index("u1")  # test target t1
    full = rank_of_targets(scores[user : user + 1], torch.tensor([t1]))
    assert int(full) >= ranked["none"][user] + 1  # the twin s1 (>= t1's score) counted only over the whole catalogue


def test_a_history_twin_of_the_target_counts_against_it_unmasked_and_not_when_history_is_masked(transferred):
    """u0's test target t0 has the text of t3, its validation item: same content, same score. Unmasked, t3 ties with
    t0 and ranks before it; with the history masked it is gone, so the masked rank is at least one better."""
    model, processor, dataset_dict, candidates = transferred
    ranked = new_domain.rank_split(model, processor, dataset_dict, "test", candidates)
    user = list(SEQUENCES).index("u0")
    assert ranked["target_item_ids"][user] == "t0"
    assert ranked["none"][user] >= ranked["history"][user] + 1


def test_popularity_ranks_count_the_training_split_over_the_target_catalogue():
    dataset_dict = _target_dataset()
    ranked = new_domain.popularity_ranks(dataset_dict, "test")
    # training interactions (i_1..i_3 of every user): t1 x2, t2 x3, t4 x2, t0 x2 -> t2 3; t0, t1, t4 2; t3 0
    # u0 target t0 (count 2): ties t0, t1, t4 and t2 above -> rank 4 unmasked; masked history t1 t2 t4 t3 -> rank 1
    # u1 target t1: ranks 4 / masked (t0 t4 t2 t3 gone) 1; u2 target t3 (count 0): last, 5 / masked 1
    assert ranked["none"] == [4, 4, 5]
    assert ranked["history"] == [1, 1, 1]


def test_arguments_defaults_and_refusals():
    args = new_domain.parse_args([])
    assert args.stages == list(new_domain.STAGES) and args.seeds == [0] and args.source_checkpoint is None
    assert (args.finetune_steps, args.finetune_eval_every) == (new_domain.FINETUNE_STEPS,
                                                               new_domain.FINETUNE_EVAL_EVERY)
    with pytest.raises(SystemExit):
        new_domain.parse_args(["--source-checkpoint", "x", "--seeds", "0", "1"])
    with pytest.raises(SystemExit):
        new_domain.parse_args(["--finetune-steps", "25", "--finetune-eval-every", "10"])
    assert new_domain.source_eval_every(600) == 150 and new_domain.source_eval_every(30) == 30


def test_source_budget_reads_the_amazon_mi_budget_else_the_default(tmp_path):
    path = tmp_path / "step_budgets.json"
    assert new_domain.source_budget(path, None)[0] == new_domain.DEFAULT_SOURCE_STEPS
    path.write_text('{"amazon-mi": {"steps": 450}}')
    assert new_domain.source_budget(path, None)[0] == 450
    assert new_domain.source_budget(path, 30) == (30, "--source-steps")


def _lines(variant="zero-shot from amazon-mi"):
    dataset_dict = _target_dataset()
    order = [(user, sequence[3], sequence[4]) for user, sequence in reversed(SEQUENCES.items())]  # another order
    valid = new_domain.popularity_ranks(dataset_dict, "validation")
    test = new_domain.popularity_ranks(dataset_dict, "test")
    return new_domain.contract_lines(model="UniMP-tiny", variant=variant, seed=0, budget={"steps": 0},
                                     train_seconds=0.0, valid=valid, test=test, order=order, n_items=5,
                                     extra={"transfer": {"setting": "zero-shot"}}), test


def test_contract_lines_validate_and_carry_the_ranks_in_the_split_files_order(tmp_path):
    lines, test = _lines()
    assert [line["masking"] for line in lines] == list(contract.MASKINGS)
    for line in lines:
        contract.validate_line(line)
        assert line["dataset"] == "amazon-2018" and line["n_items"] == 5
        assert line["ranks"] == test[line["masking"]][::-1]  # the order's users are reversed
    contract.append_results(lines, tmp_path)
    assert [line["variant"] for line in contract.read_results(tmp_path)] == ["zero-shot from amazon-mi"] * 2


def test_new_domain_lines_leave_the_generated_tables_unchanged():
    lines, _ = _lines()
    peer_split = [dict(line, dataset="ml100k", model="SASRec", variant="default") for line in lines]
    assert report.render_report(peer_split + lines) == report.render_report(peer_split)
    assert report.render_summary(peer_split + lines) == report.render_summary(peer_split)
    assert "amazon-2018" not in report.render_report(lines) and "zero-shot" not in report.render_report(lines)


def test_real_target_catalogue_is_new_to_the_source_and_popularity_ranks_lie_in_it(data_dir):
    from processing.datasets_unimp import load_unimp_dataset

    target = load_unimp_dataset(new_domain.TARGET_BUILDER, data_dir)
    items = new_domain.target_item_dicts(target)
    assert len(items) == len(target["items"]) and all(isinstance(pair, tuple) for pair in items[0]["attributes"])
    ranked = new_domain.popularity_ranks(target, "test")
    assert len(ranked["none"]) == len(target["test"])
    assert all(1 <= r <= len(items) for r in ranked["none"] + ranked["history"])
    assert all(user.endswith(("_Gift_Cards", "_Magazine_Subscriptions")) for user in ranked["user_ids"])


def test_table_has_one_row_per_model_variant_and_masking_with_the_seed_count():
    lines, _ = _lines()
    seeds = lines + [dict(line, seed=1) for line in lines]
    table = new_domain.format_table(seeds).splitlines()
    assert len(table) == 2 + 2  # header, rule, one row per masking
    assert all("| UniMP-tiny | zero-shot from amazon-mi |" in row and "| 2 |" in row for row in table[2:])
    assert " ± 0.0000" in table[2]
