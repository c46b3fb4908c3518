#!/usr/bin/env python
"""SASRec's full-ranking test throughput on the project's ML-100K split, without training it (issue 13).

Runs in ``.venv-recbole``: builds RecBole's dataset and loaders exactly as ``run_peers.py`` does (same config, same
split file, the ML-100K dropout overrides of ``make bench-peers``), initialises SASRec and times RecBole's full-sort
test pass (``trainer.evaluate``), median of ``--repeats``. Evaluation does the same arithmetic for trained and
untrained weights, so training (minutes to hours on a busy box) is skipped; ``run_peers.py`` measures the same
quantity after training (``eval_users_per_s`` of its result lines). Prints one JSON line.

Usage: .venv-recbole/bin/python benchmarks/sasrec_eval_speed.py --data-dir outputs/recbole_atomic [--threads 2]
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_peers as peers  # noqa: E402  (stdlib-only at import; recbole is imported inside its helpers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--dataset", default="ml100k")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="sasrec-speed-")
    spec = {"dataset": args.dataset, "model": "SASRec", "seed": 2020, "data_dir": str(Path(args.data_dir).resolve()),
            "epoch_cap": 1, "patience": 10, "threads": args.threads, "workdir": workdir,
            "overrides": {"hidden_dropout_prob": 0.2, "attn_dropout_prob": 0.2}}  # make bench-peers' ML-100K setting
    spec_path = Path(workdir, "spec.json")
    spec_path.write_text(json.dumps(spec))
    peers.child_prologue(str(spec_path))
    from recbole.utils import get_model, get_trainer

    config, dataset, (train_data, valid_data, test_data), _ = peers.prepare_recbole(spec, peers.build_config_dict)
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.evaluate(test_data, load_best_model=False, show_progress=False)  # warm-up
    seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        seconds.append(time.perf_counter() - started)
    users = int(test_data.sample_size)
    median = statistics.median(seconds)
    print(json.dumps({"model": "SASRec", "dataset": args.dataset, "test_users": users, "threads": args.threads,
                      "eval_seconds": median, "eval_users_per_s": users / median,
                      "n_items": int(dataset.item_num - 1)}))


if __name__ == "__main__":
    main()
