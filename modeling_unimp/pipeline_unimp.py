"""UniMPRecommendPipeline, task "unimp-recommend": a user's history -> ranked catalogue items (reference §4).

Checkpoint file: imports torch, transformers, PIL and same-folder modules only, so `trust_remote_code=True` loads
it from a checkpoint.
"""

import numbers
import os
from collections.abc import Mapping, Sequence, Sized

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset
from transformers import LogitsProcessor, LogitsProcessorList, Pipeline
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator
from transformers.utils import logging

from .catalogue_cache import UniMPImageCache, latent_batch
from .prompt_templates import END_OF_CHUNK_TOKEN, RATING_TOKENS, SELECTION_TOKENS
from .prompt_templates import TASKS as TEMPLATE_TASKS

logger = logging.get_logger(__name__)

TASKS = tuple(task for task in TEMPLATE_TASKS if task != "imggen")  # imggen has its own pipeline
METHODS = ("exact", "beam")
DEFAULT_BATCH_SIZE = 16
# Beam widths and lengths of the reference's evaluation scripts (reference §4.1, §4.3, §4.4).
DEFAULT_NUM_BEAMS = {"rec": 10, "search": 10, "exp": 5, "select": 2}
IMAGE_CACHE_ENTRIES = 4096  # preprocessed image files a pipeline keeps (a tiny-model poster is 48 KiB)
DEFAULT_EXP_MAX_NEW_TOKENS = 64  # a rating token + an explanation cut to 30 words (prompt_templates budget)


def _positive_int(name: str, value) -> int:
    """`value` as an int >= 1, else `ValueError` naming the argument (bools, floats and strings are refused, so
    `top_k=2.5`, `True` or `"5"` fail here rather than inside torch)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r} ({type(value).__name__})")
    return int(value)


def _history_window(max_history_items: int) -> int:
    """A validated `max_history_items` (both UniMP pipelines)."""
    return _positive_int("max_history_items", max_history_items)


class UniMPAllowedTokens(LogitsProcessor):
    """Keep only allowed tokens: `first` (B, V) for the first generated token, `later` (B, V) or None afterwards;
    with `no_repeat`, a token of `first` is allowed once per answer (selection slots).

    Rows are repeated to the (B * beams, V) score matrix of beam search.
    """

    def __init__(self, first: torch.Tensor, later: torch.Tensor | None, prompt_length: int, no_repeat: bool = False):
        self.first, self.later, self.prompt_length, self.no_repeat = first, later, prompt_length, no_repeat

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        is_first = input_ids.shape[1] == self.prompt_length
        allowed = self.first if is_first else self.later
        if allowed is None:
            return scores
        repeat = scores.shape[0] // allowed.shape[0]
        allowed = allowed.to(scores.device).repeat_interleave(repeat, dim=0)  # (B * beams, V)
        if self.no_repeat and not is_first:
            used = torch.zeros_like(allowed).scatter_(1, input_ids[:, self.prompt_length :], True)
            allowed = allowed & ~(used & self.first.to(scores.device).repeat_interleave(repeat, dim=0))
        return scores.masked_fill(~allowed, float("-inf"))


def answer_end_token_ids(tokenizer) -> list[int]:
    """Token ids that end a generated answer: EOS and `<|endofchunk|>` (the `eos_token_id` of every UniMP answer)."""
    return [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END_OF_CHUNK_TOKEN)]


def generate_rating_answers(model, tokenizer, inputs: Mapping, *, num_beams: int = DEFAULT_NUM_BEAMS["exp"],
                            max_new_tokens: int = DEFAULT_EXP_MAX_NEW_TOKENS, **generate_kwargs):
    """`model.generate` for exp prompts (ending at `<answer>`): the first new token is constrained to a rating token
    `rate_1..rate_5` (reference §4.4 reads the first word as the rating; the constraint removes the official code's
    "unparsable -> 3.0" case), then free text up to `<|endofchunk|>`/EOS, without sampling.

    Args:
        model: a `UniMPForConditionalGeneration`.
        tokenizer: the processor's tokenizer.
        inputs: the processor's left-padded batch, `input_ids` (B, T).
        num_beams, max_new_tokens: decoding settings (the pipeline's defaults: the reference's 5 beams, 64 tokens).
        generate_kwargs: more `generate` arguments (e.g. `output_logits=True, return_dict_in_generate=True`).

    Returns: what `model.generate` returns; new tokens start at position T.
    """
    batch, prompt_length = inputs["input_ids"].shape
    vocab_size = model.get_output_embeddings().weight.shape[0]
    first = torch.zeros(batch, vocab_size, dtype=torch.bool)
    first[:, tokenizer.convert_tokens_to_ids(list(RATING_TOKENS))] = True
    allowed = UniMPAllowedTokens(first, None, prompt_length)
    settings = {"do_sample": False, "num_beams": num_beams, "max_new_tokens": max_new_tokens,
                "pad_token_id": tokenizer.pad_token_id, "eos_token_id": answer_end_token_ids(tokenizer),
                **generate_kwargs}
    return model.generate(**inputs, logits_processor=LogitsProcessorList([allowed]), **settings)


def rating_probabilities(logits: torch.Tensor, tokenizer) -> torch.Tensor:
    """Next-token logits (B, V) at an exp answer's first position -> (B, 5) probabilities of `rate_1..rate_5`: the
    softmax over the five rating tokens (in float32), which is the distribution of the constrained first step."""
    return logits[:, tokenizer.convert_tokens_to_ids(list(RATING_TOKENS))].float().softmax(-1)


def expected_rating(probabilities: torch.Tensor) -> torch.Tensor:
    """(..., 5) rating-token probabilities -> (...) expected rating sum_k k * p(rate_k), in [1, 5] (the squared-error
    optimum; the reported exp rating of the pipeline and of `recipes.evaluate`)."""
    values = torch.arange(1, len(RATING_TOKENS) + 1, dtype=probabilities.dtype, device=probabilities.device)
    return probabilities @ values


def _cut_at_answer_end(tokenizer, token_ids: Sequence[int]) -> list[int]:
    end_ids = {*answer_end_token_ids(tokenizer), tokenizer.pad_token_id}
    return list(token_ids[: next((n for n, token in enumerate(token_ids) if token in end_ids), len(token_ids))])


def decode_rating_answer(tokenizer, token_ids: Sequence[int]) -> dict:
    """A generated exp answer (new tokens only) -> `{"rating": 1-5 or None, "explanation", "generated_text"}`;
    decoding stops at the first EOS, `<|endofchunk|>` or padding. `rating` is the generated rating token's (the
    pipeline reports it as `rating_token`, next to the expected rating)."""
    token_ids = _cut_at_answer_end(tokenizer, token_ids)
    tokens = tokenizer.convert_ids_to_tokens(token_ids)
    rating = RATING_TOKENS.index(tokens[0]) + 1 if tokens and tokens[0] in RATING_TOKENS else None
    return {"rating": rating, "explanation": tokenizer.decode(token_ids[1:], skip_special_tokens=True).strip(),
            "generated_text": tokenizer.decode(token_ids, skip_special_tokens=True).strip()}


class UniMPRecommendPipeline(Pipeline):
    r"""Recommend catalogue items from a user's history with a UniMP checkpoint and its `UniMPProcessor`.

    A history is a list of items, oldest first: catalogue item ids (str), or item dicts
    `{"item_id"?, "attributes"?: [(key, value), ...], "title"?, "image"?: PIL image | path | None, ...}`. Ids
    are expanded from the processor's catalogue (its stored attributes, else a `Title`, and the catalogue
    image), or from `items` (item_id -> item dict, e.g.
    `processing.task_records.items_by_id(dataset["items"])`) to render exactly the training-time attributes.
    Only the last `max_history_items` items are shown to the model (default: `processor.max_history_items`).

    Tasks (`task=`, or a `"task"` key per record `{"history": [...], "task", "query", "target", "candidates"}`):
    - "rec" (default): the next item; `[{"item_id", "score", "title", "image"}]`, best first. `method="exact"`
      scores the whole catalogue in one forward pass (`score_items`; score = softmax over the catalogue's item
      tokens; images as perceiver latents cached per image file and vision weights, the tower never reruns on a
      known poster); `method="beam"` runs `generate(num_beams=...)` over the item tokens, the reference's decoding
      (§4.1), and gives the same ranking for single-token items.
    - "search": as "rec", for a `query` string (§4.2).
    - "exp": the rating and explanation of a `target` item; history items need a `rating` (1-5).
      Returns `{"rating", "rating_token", "explanation", "generated_text"}`: the first generated token is
      constrained to a rating token; `rating` (float in [1, 5]) is the expected rating sum_k k * p(rate_k) under the
      softmax over the five rating tokens at that first step, `rating_token` (int 1-5) the generated token's rating.
      History items before the processor's last `content_history_items` are rendered as their token and rating
      alone, so they need a catalogue `item_id`.
    - "select": which of 1-5 `candidates` suit the user (§4.3); returns `{"slots", "item_ids", "generated_text"}`.

    A list of histories (or records) is a batch: left-padded and scored `batch_size` at a time (default 16); a
    `datasets` column (`KeyDataset(dataset, "history")`) or a generator streams through the base
    `Pipeline.__call__` the same way. `exclude_history` defaults to `processor.default_exclude_history` (True when
    the training data had no repeated user-item pairs); other keywords (`temperature`, `do_sample`, ...) go to
    `generate` for the generating tasks (exp, select). An unknown item id
    raises `KeyError` naming it, an empty history `ValueError`; an image that does not decode makes its item
    text-only, with a warning.

    Loading (transformers requires `trust_remote_code=True` for any checkpoint whose config lists the task in
    `custom_pipelines`, even where this package is installed, so each checkpoint carries one scheme):
    - in memory, package imported: `pipeline("unimp-recommend", model=model, processor=processor)`;
    - a `save_pretrained` folder (recipes/train.py output, no `custom_pipelines`), package imported:
      `pipeline("unimp-recommend", model=folder)`;
    - a published checkpoint (recipes/push_to_hub.py writes `custom_pipelines` and copies this file), with or
      without the package: `pipeline("unimp-recommend", model=repo_id, trust_remote_code=True)`; to run the
      installed code instead, pass `pipeline_class=UniMPRecommendPipeline`.

    Example (an untrained model, so the ranking itself means nothing):
        >>> from transformers import pipeline
        >>> from modeling_unimp import UniMPConfig, UniMPForConditionalGeneration, UniMPProcessor
        >>> from modeling_unimp import train_catalogue_tokenizer
        >>> tokenizer = train_catalogue_tokenizer(["Title Toy Story Heat Up"], vocab_size=300)
        >>> processor = UniMPProcessor.from_catalogue(tokenizer, ["m1", "m2", "m3"], ["Toy Story", "Heat", "Up"],
        ...                                           image_size=64)
        >>> model = UniMPForConditionalGeneration(UniMPConfig.tiny()).eval()
        >>> processor.prepare_model(model)
        >>> recommend = pipeline("unimp-recommend", model=model, processor=processor, device="cpu")
        >>> top = recommend(["m1", {"item_id": "m2", "image": None}], top_k=2)
        >>> [sorted(result) for result in top]
        [['image', 'item_id', 'score', 'title'], ['image', 'item_id', 'score', 'title']]
        >>> [r["item_id"] for r in recommend([["m1"], ["m2", "m3"]], top_k=3, method="beam")[1]] == [
        ...     r["item_id"] for r in recommend(["m2", "m3"], top_k=3)]
        True
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _pipeline_calls_generate = False  # _forward calls generate with per-task settings

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is None:
            raise ValueError("UniMPRecommendPipeline needs the checkpoint's UniMPProcessor: pass processor=...")
        if not hasattr(self.processor, "render_prompt"):
            raise ValueError(f"{type(self.processor).__name__} has no render_prompt: the checkpoint's processor code "
                             "predates this pipeline; re-save the processor with the current unimp package")
        # image files preprocessed once per pipeline, not once per call (issue 13); PIL images from callers are not
        # kept (a long-lived pipeline would grow with every new picture)
        self.image_cache = (UniMPImageCache(self.processor, cache_objects=False, max_entries=IMAGE_CACHE_ENTRIES)
                            if hasattr(self.processor, "preprocess_images") else None)
        config = self.model.config
        if (config.num_items, config.item_token_start_id) != (
            self.processor.num_items,
            self.processor.item_token_start_id,
        ):
            raise ValueError(
                f"the processor's catalogue ({self.processor.num_items} items from token "
                f"{self.processor.item_token_start_id}) does not match the model config ({config.num_items} items "
                f"from token {config.item_token_start_id}); load both from the same checkpoint"
            )

    # ------------------------------------------------------------------ parameters
    def _sanitize_parameters(
        self,
        task: str | None = None,
        query: str | None = None,
        target=None,
        candidates=None,
        max_history_items: int | None = None,
        items=None,
        image_root: str | None = None,
        method: str | None = None,
        top_k: int | None = None,
        num_beams: int | None = None,
        max_new_tokens: int | None = None,
        exclude_history: bool | None = None,
        **generate_kwargs,
    ):
        preprocess, forward, postprocess = {}, {}, {}
        if generate_kwargs:  # e.g. temperature, do_sample: passed to `generate` where the task generates
            forward["generate_kwargs"] = generate_kwargs
        if task is not None:
            if task not in TASKS:
                raise ValueError(f"task must be one of {TASKS}, got {task!r}")
            preprocess["task"] = task
        for name, value in (("query", query), ("target", target), ("candidates", candidates)):
            if value is not None:
                preprocess[name] = value
        if max_history_items is not None:
            preprocess["max_history_items"] = _history_window(max_history_items)
        if items is not None:
            preprocess["items"] = items if isinstance(items, Mapping) else {str(i["item_id"]): i for i in items}
        if image_root is not None:
            preprocess["image_root"] = postprocess["image_root"] = str(image_root)
        if method is not None:
            if method not in METHODS:
                raise ValueError(f"method must be one of {METHODS}, got {method!r}")
            forward["method"] = method
        if top_k is not None:
            forward["top_k"] = postprocess["top_k"] = _positive_int("top_k", top_k)
        if num_beams is not None:
            forward["num_beams"] = _positive_int("num_beams", num_beams)
        if max_new_tokens is not None:  # exp needs its rating token, select a slot: 0 new tokens is no answer
            forward["max_new_tokens"] = _positive_int("max_new_tokens", max_new_tokens)
        if exclude_history is not None:
            if not isinstance(exclude_history, bool):
                raise ValueError(f"exclude_history must be True or False, got {exclude_history!r}")
            forward["exclude_history"] = postprocess["exclude_history"] = exclude_history
        return preprocess, forward, postprocess

    # ------------------------------------------------------------------ calling
    def __call__(self, inputs, *args, batch_size: int | None = None, **kwargs):
        """Recommend for one history (a list of ids or item dicts, or a record dict), a list of them, a `datasets`
        column (`KeyDataset`) or a generator of them; the base `Pipeline.__call__` does the rest (one record per
        `preprocess`, `batch_size` records per forward pass).

        Args:
            inputs: a history, a record `{"history", "task"?, "query"?, "target"?, "candidates"?}`, or a list,
                `KeyDataset` or generator of histories/records.
            batch_size: records per forward pass (a list defaults to 16, or the pipeline's `batch_size`).
            kwargs: `task`, `query`, `target`, `candidates` (defaults for every record), `top_k` (10),
                `method` ("exact" | "beam"), `max_history_items` (default: the processor's, the training window),
                `exclude_history` (default: `processor.default_exclude_history`, True when the training data had no
                repeated user-item pairs), `num_beams`, `max_new_tokens`, `items`, `image_root`; other keywords
                (e.g. `temperature`, `do_sample`) go to `generate` where the task generates.
        Returns: one result for one history, a list of results for a list, an iterator for a dataset or generator.
        """
        if isinstance(inputs, (Mapping, list, tuple, str)) or not hasattr(inputs, "__iter__") and not isinstance(
                inputs, TorchDataset):  # a torch Dataset (KeyDataset) or a generator goes to the base as is
            records, single = _as_records(inputs)
            inputs = records[0] if single else records
            if not single and batch_size is None and self._batch_size is None:
                batch_size = DEFAULT_BATCH_SIZE
        return super().__call__(inputs, *args, batch_size=batch_size, **kwargs)

    def get_iterator(self, inputs, num_workers: int, batch_size: int, preprocess_params, forward_params,
                     postprocess_params):
        """The base iterator with this pipeline's collation (records of mixed tasks and image counts)."""
        if isinstance(inputs, Sized):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        else:
            dataset = PipelineIterator(inputs, self.preprocess, preprocess_params)
            num_workers = min(num_workers, 1)
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=_collate_records)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)

    def preprocess(self, inputs, max_history_items: int | None = None, items=None, image_root: str | None = None,
                   task: str | None = None, **defaults) -> dict:
        """One history or record -> its rendered prompt (text and pixel images) plus what decoding needs; the
        prompts are tokenised and left-padded per batch in `_forward`. Each value is a one-row list (collation)."""
        records, single = _as_records(inputs)
        if not single:
            raise ValueError("preprocess takes one history or record; a list of histories is a batch for __call__")
        if task is not None:
            defaults["task"] = task
        record = _with_defaults(records[0], defaults)
        task = record["task"]
        max_history_items = max_history_items or self.processor.max_history_items  # the training window
        prompts, history_indices, candidate_ids = [], [], []
        for row, record in enumerate([record]):
            where = "input"
            history = record.get("history")
            if history is not None and not isinstance(history, (list, tuple)):
                raise ValueError(f"{where}: `history` must be a list of item ids or item dicts, got "
                                 f"{type(history).__name__}")
            if not history:
                raise ValueError(f"{where}: the history is empty; give at least one item id or item dict")
            # an id before the window is not rendered: checking it is known (KeyError naming it, as a full
            # resolution raises) gives its catalogue index; the window and every item dict resolve fully
            window_start, resolved, seen = len(history) - max_history_items, [], set()
            # exp: the history items before the processor's last `content_history_items` are their token alone
            content = getattr(self.processor, "content_history_items", None)
            first_with_content = len(history) - content if task == "exp" and content is not None else 0
            for n, entry in enumerate(history):
                if n < window_start and not isinstance(entry, Mapping):
                    seen.add(self.processor.item_index(_item_id(entry, f"{where} history[{n}]")))
                    continue
                item = self._resolve_item(entry, f"{where} history[{n}]", items, image_root,
                                          task in ("rec", "search") or n < first_with_content)
                if item.get("item_id") is not None and self._is_known(item["item_id"]):
                    seen.add(self.processor.item_index(item["item_id"]))
                if n >= window_start:
                    resolved.append(item)
            prompt_record = {"task": task, "history": resolved}
            if task == "search":
                if not isinstance(record.get("query"), str) or not record["query"].strip():
                    raise ValueError(f"{where}: task 'search' needs a non-empty `query` string")
                prompt_record["query"] = record["query"]
            elif task == "exp":
                if record.get("target") is None:
                    raise ValueError(f"{where}: task 'exp' needs the `target` item to rate and explain")
                prompt_record["target"] = self._resolve_item(record["target"], f"{where} target", items, image_root,
                                                             False)
            elif task == "select":
                candidates = record.get("candidates") or []
                if not 1 <= len(candidates) <= len(SELECTION_TOKENS):
                    raise ValueError(f"{where}: task 'select' needs 1 to {len(SELECTION_TOKENS)} `candidates`, got "
                                     f"{len(candidates)}")
                prompt_record["candidates"] = [
                    self._resolve_item(entry, f"{where} candidates[{n}]", items, image_root, False)
                    for n, entry in enumerate(candidates)
                ]
                candidate_ids.append([item.get("item_id") for item in prompt_record["candidates"]])
            if task != "select":
                candidate_ids.append([])
            prompts.append(self.processor.render_prompt(prompt_record))
            history_indices.append(sorted(seen))
        # image references: `_forward` turns them into cached latents (exact ranking) or cached pixels (generation)
        return {"text": [p["text"] for p in prompts], "images": [p["images"] for p in prompts],
                "task": [task], "history_indices": history_indices, "candidate_ids": candidate_ids}

    def _exclude_history_default(self, exclude_history: bool | None) -> bool:
        if exclude_history is not None:
            return exclude_history
        return bool(getattr(self.processor, "default_exclude_history", False))

    def _forward(self, model_inputs: dict, method: str = "exact", top_k: int = 10, num_beams: int | None = None,
                 max_new_tokens: int | None = None, exclude_history: bool | None = None,
                 generate_kwargs: dict | None = None) -> dict:
        """A collated batch (records of any tasks) -> {"rows": one output dict per record, in input order}."""
        exclude_history = self._exclude_history_default(exclude_history)
        rows: list = [None] * len(model_inputs["task"])
        for task in TASKS:  # one task per forward pass: each task decodes differently
            positions = [n for n, name in enumerate(model_inputs["task"]) if name == task]
            if not positions:
                continue
            texts, images = [model_inputs["text"][n] for n in positions], [model_inputs["images"][n] for n in positions]
            if task in ("rec", "search") and method == "exact" and self.image_cache is not None:
                batch = latent_batch(self.model, self.processor, self.image_cache, texts, images)  # no tower rerun
            else:
                batch = self.processor(text=texts, images=[self._pixels(row) for row in images], padding_side="left")
            batch = self._ensure_tensor_on_device(dict(batch), device=self.device)
            group = {"task": task, "model_inputs": batch,
                     "history_indices": [model_inputs["history_indices"][n] for n in positions],
                     "candidate_ids": [model_inputs["candidate_ids"][n] for n in positions]}
            outputs = self._forward_task(group, method, top_k, num_beams, max_new_tokens, exclude_history,
                                         dict(generate_kwargs or {}))
            for row, n in enumerate(positions):
                rows[n] = {key: (value if key == "task" else value[row]) for key, value in outputs.items()}
        return {"rows": rows}

    def _forward_task(self, model_inputs: dict, method: str, top_k: int, num_beams: int | None,
                      max_new_tokens: int | None, exclude_history: bool, user_generate_kwargs: dict) -> dict:
        task, inputs = model_inputs["task"], model_inputs["model_inputs"]
        outputs = {key: value for key, value in model_inputs.items() if key != "model_inputs"}
        if task in ("rec", "search") and method == "exact":
            outputs["item_logits"] = self.model.score_items(**inputs)  # (B, num_items), one forward pass
            return outputs
        batch, prompt_length = inputs["input_ids"].shape
        tokenizer = self.processor.tokenizer
        if task == "exp":  # the answer starts with its rating token (reference §4.4), then free text
            generated = generate_rating_answers(self.model, tokenizer, inputs,
                                                num_beams=num_beams or DEFAULT_NUM_BEAMS[task],
                                                max_new_tokens=max_new_tokens or DEFAULT_EXP_MAX_NEW_TOKENS,
                                                **{**user_generate_kwargs, "output_logits": True,
                                                   "return_dict_in_generate": True})
            outputs["generated_ids"] = generated.sequences[:, prompt_length:]
            # the raw logits of step 0 (before the rating constraint, temperature and any other processor) are the
            # prompt's next-token logits; every beam / returned sequence of a row holds the same prompt there
            logits = generated.logits[0].view(batch, -1, generated.logits[0].shape[-1])[:, 0]
            outputs["rating_probabilities"] = rating_probabilities(logits, tokenizer)  # (B, 5)
            return outputs
        vocab_size = self.model.get_output_embeddings().weight.shape[0]
        end_ids = answer_end_token_ids(tokenizer)
        first = torch.zeros(batch, vocab_size, dtype=torch.bool)
        later = None
        generate_kwargs = {"do_sample": False, "pad_token_id": tokenizer.pad_token_id, "eos_token_id": end_ids}
        if task in ("rec", "search"):  # one item = one token: a one-step beam search over the item tokens
            start, num_items = self.processor.item_token_start_id, self.processor.num_items
            first[:, start : start + num_items] = True
            if exclude_history:
                for row, indices in enumerate(model_inputs["history_indices"]):
                    first[row, [start + k for k in indices]] = False
            # rows may allow fewer items than others (a longer excluded history): beams past a row's allowed items
            # carry -inf scores and are dropped in `_rank`
            num_return = max(1, min(top_k, int(first.sum(dim=1).max())))
            outputs["beam_allowed"] = first[:, start : start + num_items]  # (B, num_items)
            generate_kwargs.update(num_beams=max(num_beams or DEFAULT_NUM_BEAMS[task], num_return),
                                   num_return_sequences=num_return, max_new_tokens=1, output_logits=True,
                                   return_dict_in_generate=True)
        else:  # select: slot tokens of the row's candidates, at least one, then the end of the answer
            for row, candidates in enumerate(model_inputs["candidate_ids"]):
                first[row, tokenizer.convert_tokens_to_ids(list(SELECTION_TOKENS[: len(candidates)]))] = True
            later = first.clone()
            later[:, end_ids] = True
            generate_kwargs.update(num_beams=num_beams or DEFAULT_NUM_BEAMS[task],
                                   max_new_tokens=max_new_tokens or len(SELECTION_TOKENS) + 1)
        allowed = UniMPAllowedTokens(first, later, prompt_length, no_repeat=task == "select")
        if task == "select":  # rec/search beams keep their one-step settings (scores and ranks depend on them)
            generate_kwargs.update(user_generate_kwargs)
        generated = self.model.generate(**inputs, logits_processor=LogitsProcessorList([allowed]), **generate_kwargs)
        if task in ("rec", "search"):
            outputs["beam_tokens"] = generated.sequences[:, -1].view(batch, -1)  # (B, k), best first
            logits = generated.logits[0].view(batch, -1, vocab_size)[:, 0]  # step 0: every beam holds the prompt
            outputs["item_logits"] = self.model.item_logits(logits)  # (B, num_items)
        else:
            outputs["generated_ids"] = generated[:, prompt_length:]
        return outputs

    def postprocess(self, model_outputs: dict, top_k: int = 10, exclude_history: bool | None = None,
                    image_root: str | None = None):
        """One record's output (a one-row `rows` list, or the row itself after the loader unbatches) -> its result."""
        row = model_outputs["rows"]
        row = row[0] if isinstance(row, list) else row
        return self._postprocess_rows(_as_batch_of_one(row), top_k, self._exclude_history_default(exclude_history),
                                      image_root)[0]

    def _postprocess_rows(self, model_outputs: dict, top_k: int, exclude_history: bool, image_root: str | None):
        task = model_outputs["task"]
        if task in ("rec", "search"):
            return self._rank(model_outputs, top_k, exclude_history, image_root)
        tokenizer = self.processor.tokenizer
        if task == "exp":  # "rating": the expected rating; "rating_token": the generated rating token's
            results = []
            for token_ids, probabilities in zip(model_outputs["generated_ids"].tolist(),
                                                model_outputs["rating_probabilities"]):
                decoded = decode_rating_answer(tokenizer, token_ids)
                results.append({"rating": expected_rating(probabilities).item(), "rating_token": decoded["rating"],
                                "explanation": decoded["explanation"], "generated_text": decoded["generated_text"]})
            return results
        results = []
        for row, token_ids in enumerate(model_outputs["generated_ids"].tolist()):
            tokens = tokenizer.convert_ids_to_tokens(_cut_at_answer_end(tokenizer, token_ids))
            candidates = model_outputs["candidate_ids"][row]
            slots = sorted({SELECTION_TOKENS.index(t) for t in tokens if t in SELECTION_TOKENS[: len(candidates)]})
            text = " ".join(tokens)  # slot tokens only (constrained), spaced as in the template's answers
            results.append({"slots": slots, "item_ids": [candidates[s] for s in slots], "generated_text": text})
        return results

    # ------------------------------------------------------------------ helpers
    def _ensure_tensor_on_device(self, inputs, device):
        """The base class's recursive move, skipped where there is nothing to move: on a CPU pipeline every tensor
        of a batch and of the model's outputs is on the CPU already, and the walk over every history index of
        every record cost ~7 % of an exact ranking call (issue 13)."""
        if torch.device(device).type == "cpu" and self.device.type == "cpu" and self.model.device.type == "cpu":
            return inputs
        return super()._ensure_tensor_on_device(inputs, device)

    def _pixels(self, images: list) -> list:
        """A prompt's images as cached pixel tensors (None stays None, and so does an image that does not decode)."""
        if self.image_cache is None or not images:
            return images
        pixels, present = self.image_cache.pixel_values(images)
        return [pixels[n] if present[n] else None for n in range(len(images))]

    def _rank(self, model_outputs: dict, top_k: int, exclude_history: bool, image_root: str | None) -> list[list[dict]]:
        item_logits = model_outputs["item_logits"].float()
        probabilities = item_logits.softmax(dim=-1)  # (B, num_items): the score is over the whole catalogue
        results = []
        for row in range(item_logits.shape[0]):
            if "beam_tokens" in model_outputs:
                start = self.processor.item_token_start_id
                allowed = model_outputs["beam_allowed"][row]
                indices = [token - start for token in model_outputs["beam_tokens"][row].tolist()]
                indices = [k for k in dict.fromkeys(indices) if 0 <= k < len(allowed) and allowed[k]]
                indices = sorted(indices, key=lambda k: -float(item_logits[row, k]))[:top_k]
            else:
                logits = item_logits[row].clone()
                if exclude_history:
                    logits[model_outputs["history_indices"][row]] = float("-inf")
                count = min(top_k, int(torch.isfinite(logits).sum()))
                indices = torch.topk(logits, count).indices.tolist()
            results.append([self._describe_item(int(k), float(probabilities[row, k]), image_root) for k in indices])
        return results

    def _is_known(self, item_id: str) -> bool:
        try:
            self.processor.item_index(item_id)
        except KeyError:
            return False
        return True

    def _describe_item(self, index: int, score: float, image_root: str | None) -> dict:
        title = self.processor.item_titles[index] or None
        image = _resolve_path(self.processor.item_images[index], image_root)
        return {"item_id": self.processor.item_ids[index], "score": score, "title": title,
                "image": image if isinstance(image, str) else None}

    def _resolve_item(self, entry, where: str, items: Mapping | None, image_root: str | None,
                      needs_token: bool) -> dict:
        """An id or item dict -> the item dict `render_record` reads; catalogue fields fill what is missing."""
        if isinstance(entry, Mapping):
            item = dict(entry)
            if item.get("item_id") is not None:
                item["item_id"] = _item_id(item["item_id"], f"{where}.item_id")
        else:
            item = {"item_id": _item_id(entry, where)}
        item_id = item.get("item_id")
        known = item_id is not None and self._is_known(str(item_id))
        if item_id is not None:
            item["item_id"] = item_id = str(item_id)
        if needs_token and not known:
            if item_id is None:
                raise ValueError(f"{where}: this task names history items by their catalogue token; give `item_id`")
            self.processor.item_index(item_id)  # KeyError naming the unknown id
        if known:
            index = self.processor.item_index(item_id)
            catalogue = dict(items[item_id]) if items is not None and item_id in items else {}
            catalogue.setdefault("title", self.processor.item_titles[index] or None)
            stored_attributes = getattr(self.processor, "item_attributes", None)
            if stored_attributes is not None:  # the attributes the item was trained with
                catalogue.setdefault("attributes", [tuple(pair) for pair in stored_attributes[index]])
            catalogue.setdefault("image", _resolve_path(self.processor.item_images[index], image_root))
            for key in ("title", "image", "attributes"):
                if key not in item and catalogue.get(key) is not None:
                    item[key] = catalogue[key]
        if item.get("attributes") is None:
            if item.get("title") is None:
                if item_id is not None:
                    self.processor.item_index(item_id)  # KeyError naming the unknown id
                raise ValueError(f"{where}: an item dict needs `attributes` or a `title` (or a catalogue `item_id`)")
            item["attributes"] = [("Title", item["title"])]
        image = item.get("image")
        if image is not None and not isinstance(image, (str, os.PathLike, bytes, Image.Image, Mapping)):
            raise ValueError(f"{where}: `image` must be a PIL image, a file path or None, got {type(image).__name__}")
        return item


def _item_id(value, where: str) -> str:
    """An item id given as str or integer (numpy ints included) -> str; anything else is a `ValueError` naming it."""
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    hints = {bytes: "decode it to str first", float: "a float id is ambiguous (1.0 vs '1'); pass the id as str",
             type(None): "give the item's id or an item dict"}
    hint = next((text for kind, text in hints.items() if isinstance(value, kind)),
                "give a catalogue id (str) or an item dict")
    raise ValueError(f"{where}: {value!r} ({type(value).__name__}) is not an item id; {hint}")


def _resolve_path(path, image_root: str | None):
    if isinstance(path, str) and image_root is not None and not os.path.isabs(path):
        return os.path.join(image_root, path)
    return path


def _is_history_or_record(entry) -> bool:
    """A batch entry: a record dict (with `history`) or a history (a list or tuple, not an item)."""
    return (isinstance(entry, Mapping) and "history" in entry) or isinstance(entry, (list, tuple))


def _as_records(inputs) -> tuple[list[dict], bool]:
    """A history, a record, or a list of either -> (records, whether the input was a single one)."""
    if isinstance(inputs, Mapping):
        if "history" not in inputs:
            raise ValueError("a record dict needs a `history` list; an item dict alone must be wrapped in a list")
        return [dict(inputs)], True
    if isinstance(inputs, str) or not isinstance(inputs, Sequence):
        raise ValueError(f"expected a list of item ids or item dicts (a history), or a list of histories; got "
                         f"{type(inputs).__name__}")
    if not inputs:
        raise ValueError("the history is empty; give at least one item id or item dict")
    if not any(_is_history_or_record(entry) for entry in inputs):  # one history; bad entries fail by position
        return [{"history": list(inputs)}], True
    records = []
    for n, entry in enumerate(inputs):
        if isinstance(entry, Mapping) and "history" in entry:
            records.append(dict(entry))
        elif isinstance(entry, (list, tuple)):
            records.append({"history": list(entry)})
        else:
            raise ValueError(f"input {n}: a batch holds histories (lists) or records (dicts with `history`), got "
                             f"{type(entry).__name__}; do not mix item ids and histories in one list")
    return records, False


def _collate_records(rows: list[dict]) -> dict:
    """Preprocessed records (one-row lists each) -> one batch of lists; `_forward` tokenises and pads per task."""
    return {key: [value for row in rows for value in row[key]] for key in rows[0]}


def _as_batch_of_one(row: dict) -> dict:
    """One record's forward outputs -> the (1, ...) batch `_postprocess_rows` reads."""
    out = {}
    for key, value in row.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.unsqueeze(0)
        elif key == "task":
            out[key] = value
        else:
            out[key] = [value]
    return out


def _with_defaults(record: dict, defaults: dict) -> dict:
    record = {**{k: v for k, v in defaults.items() if k != "task"}, **record}
    record["task"] = record.get("task") or defaults.get("task", "rec")
    if record["task"] not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {record['task']!r}")
    return record


__all__ = [
    "UniMPAllowedTokens",
    "UniMPRecommendPipeline",
    "answer_end_token_ids",
    "decode_rating_answer",
    "expected_rating",
    "generate_rating_answers",
    "rating_probabilities",
]
