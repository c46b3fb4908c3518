"""UniMPImageGenerationPipeline, task "unimp-generate-image": a user's history + a text query -> the image of the item
the user wants, generated as one grid of `<img_c>` code tokens and decoded by the VQ image tokenizer (reference
§2.2 (vi), §4.5; issue 7).

Checkpoint file: imports torch, transformers, PIL and same-folder modules only.
"""

import os
import warnings
from collections.abc import Mapping

import torch
from transformers import LogitsProcessor, LogitsProcessorList, Pipeline

from .image_tokenizer_unimp import UniMPImageTokenizer
from .image_utils import load_image
from .pipeline_unimp import _as_records, _history_window  # one input convention for both UniMP pipelines

DEFAULT_BATCH_SIZE = 16
# The evaluation prompt never shows the target, but the template needs a well-formed one to render.
_PLACEHOLDER_TARGET = {"item_id": None, "title": "", "attributes": [], "image": None, "image_codes": [0]}


class UniMPImageCodeLogitsProcessor(LogitsProcessor):
    r"""Constrained decoding of one image: exactly `num_image_codes` code tokens, then EOS.

    With s = `input_ids.shape[1] - prompt_length` tokens generated so far, step s keeps the scores of the K code
    tokens `[code_token_start_id, code_token_start_id + K)` when s < S = `num_image_codes`, and only the score of
    `eos_token_id` when s >= S; every other score becomes -inf. Greedy search, sampling and beam search therefore
    always return one full S-code grid followed by EOS, which `UniMPImageTokenizer.string_to_codes` parses.

    Args:
        code_token_start_id (`int`): vocabulary id of `<img_0>` (`config.image_code_token_start_id`).
        num_image_code_tokens (`int`): K, the codebook size (`config.num_image_code_tokens`).
        num_image_codes (`int`): S = grid_size², the codes of one image (`UniMPImageTokenizerConfig.num_image_codes`).
        eos_token_id (`int`): the token allowed after the grid.
        prompt_length (`int`): T of the (left-padded) prompt batch given to `generate`.

    Example:
        >>> constraint = UniMPImageCodeLogitsProcessor(
        ...     code_token_start_id=5, num_image_code_tokens=3, num_image_codes=2, eos_token_id=0, prompt_length=4)
        >>> scores = constraint(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 10))
        >>> torch.isfinite(scores[0]).nonzero().flatten().tolist()
        [5, 6, 7]
        >>> scores = constraint(torch.zeros(1, 6, dtype=torch.long), torch.zeros(1, 10))
        >>> torch.isfinite(scores[0]).nonzero().flatten().tolist()
        [0]
    """

    def __init__(self, *, code_token_start_id: int, num_image_code_tokens: int, num_image_codes: int,
                 eos_token_id: int, prompt_length: int):
        if num_image_code_tokens < 1 or num_image_codes < 1:
            raise ValueError(f"num_image_code_tokens ({num_image_code_tokens}) and num_image_codes ({num_image_codes}) "
                             "must be >= 1; build the processor with num_image_code_tokens = the codebook size")
        code_ids = range(code_token_start_id, code_token_start_id + num_image_code_tokens)
        if eos_token_id in code_ids:
            raise ValueError(f"eos_token_id {eos_token_id} lies inside the code-token range {code_ids}")
        self.code_token_start_id = code_token_start_id
        self.num_image_code_tokens = num_image_code_tokens
        self.num_image_codes = num_image_codes
        self.eos_token_id = eos_token_id
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Args: input_ids (B·beams, T + s); scores (B·beams, V). Returns: scores (B·beams, V), masked."""
        step = input_ids.shape[1] - self.prompt_length
        if step < 0:
            raise ValueError(f"input_ids has {input_ids.shape[1]} tokens, fewer than prompt_length="
                             f"{self.prompt_length}")
        allowed = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)  # (V,)
        if step < self.num_image_codes:
            allowed[self.code_token_start_id : self.code_token_start_id + self.num_image_code_tokens] = True
        else:
            allowed[self.eos_token_id] = True
        return scores.masked_fill(~allowed, float("-inf"))


class UniMPImageGenerationPipeline(Pipeline):
    r"""Generate the image of the item a user wants from the user's history and a text query (issue 7).

    A history is a list of items, oldest first: catalogue item ids (str; title and image come from the
    processor's catalogue) or item dicts `{"item_id"?, "title"?, "image"?: PIL image | path, "image_codes"?: str |
    list[int]}`. Each history item is shown as `<image> Title {title} ID {codes}` (reference §2.2 vi), its codes
    computed by the image tokenizer from its image (or taken from `image_codes`); items with neither are skipped
    with a warning, as in training. Only the last `max_history_items` are shown (default: the window the model was
    trained with, `processor.image_generation_max_history_items`).

    Decoding is constrained by `UniMPImageCodeLogitsProcessor`: exactly one full code grid, then EOS; greedy by
    default (reference §4.5), `do_sample=True` samples. The codes are decoded by the image tokenizer recorded in
    `processor.vq_model_name_or_path` (a path, or a subfolder of the checkpoint) or passed as `image_tokenizer=`.

    Returns a `PIL.Image` of `output_size` (default: the image tokenizer's resolution) per input; with
    `return_codes=True` a dict `{"image", "codes": list[int] (S,), "code_string"}` instead.

    Example:
        >>> from transformers import pipeline
        >>> generate_image = pipeline("unimp-generate-image", model=model, processor=processor,
        ...                           image_tokenizer=image_tokenizer)  # or processor.vq_model_name_or_path
        >>> generate_image(["m1", "m2"], query="Toy Story", output_size=64).size
        (64, 64)
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _pipeline_calls_generate = False  # _forward calls generate with the grid constraint

    def __init__(self, *args, image_tokenizer: UniMPImageTokenizer | str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is None or not hasattr(self.processor, "render_prompt"):
            raise ValueError("UniMPImageGenerationPipeline needs the checkpoint's UniMPProcessor: pass processor=...")
        config = self.model.config
        start = getattr(config, "image_code_token_start_id", None)
        count = getattr(config, "num_image_code_tokens", 0) or 0
        if start is None or count < 1:
            raise ValueError("the model config records no <img_c> tokens (image_code_token_start_id / "
                             "num_image_code_tokens): build the processor with num_image_code_tokens=<codebook size> "
                             "and call processor.prepare_model(model) before training")
        if (start, count) != (self.processor.image_code_token_start_id, self.processor.num_image_code_tokens):
            raise ValueError(f"the processor's code tokens ({self.processor.num_image_code_tokens} from id "
                             f"{self.processor.image_code_token_start_id}) do not match the model config ({count} "
                             f"from id {start}); load both from the same checkpoint")
        self.image_tokenizer = self._load_image_tokenizer(image_tokenizer).to(self.device).eval()
        if self.image_tokenizer.config.codebook_size != count:
            raise ValueError(f"the image tokenizer has {self.image_tokenizer.config.codebook_size} codes but the model "
                             f"has {count} <img_c> tokens; use the tokenizer the model was trained with")

    def _load_image_tokenizer(self, image_tokenizer) -> UniMPImageTokenizer:
        if isinstance(image_tokenizer, UniMPImageTokenizer):
            return image_tokenizer
        name = image_tokenizer or self.processor.vq_model_name_or_path
        if not name:
            raise ValueError("no image tokenizer: pass image_tokenizer=... or set processor.vq_model_name_or_path")
        if os.path.isdir(name):
            return UniMPImageTokenizer.from_pretrained(name)
        checkpoint = getattr(self.model, "name_or_path", None) or ""
        if os.path.isdir(os.path.join(checkpoint, name)):  # a subfolder of a local checkpoint
            return UniMPImageTokenizer.from_pretrained(os.path.join(checkpoint, name))
        if checkpoint and not os.path.isdir(checkpoint):  # a Hub checkpoint: the tokenizer is its subfolder
            try:
                return UniMPImageTokenizer.from_pretrained(checkpoint, subfolder=name)
            except OSError:
                pass
        return UniMPImageTokenizer.from_pretrained(name)

    # ------------------------------------------------------------------ parameters
    def _sanitize_parameters(self, query: str | None = None, max_history_items: int | None = None,
                             output_size: int | tuple[int, int] | None = None, return_codes: bool | None = None,
                             do_sample: bool | None = None, num_beams: int | None = None,
                             temperature: float | None = None, top_k: int | None = None, top_p: float | None = None):
        preprocess, forward, postprocess = {}, {}, {}
        if query is not None:
            preprocess["query"] = query
        if max_history_items is not None:
            preprocess["max_history_items"] = _history_window(max_history_items)
        if output_size is not None:
            size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"output_size must be a positive int or (width, height), got {output_size!r}")
            postprocess["output_size"] = size
        if return_codes is not None:
            postprocess["return_codes"] = return_codes
        for name, value in (("do_sample", do_sample), ("num_beams", num_beams), ("temperature", temperature),
                            ("top_k", top_k), ("top_p", top_p)):
            if value is not None:
                forward[name] = value
        return preprocess, forward, postprocess

    # ------------------------------------------------------------------ calling
    def __call__(self, inputs, *, batch_size: int | None = None, **kwargs):
        """Generate one image per history (a list of ids or item dicts, or a record `{"history", "query"}`).

        Args:
            inputs: a history, a record `{"history": [...], "query": str}`, or a list of histories/records.
            batch_size: prompts per `generate` call (default 16).
            kwargs: `query` (the default for every record), `max_history_items` (default: the processor's
                `image_generation_max_history_items`, the training window), `output_size` (int or
                (width, height)), `return_codes` (False), and the decoding settings `do_sample`, `num_beams`,
                `temperature`, `top_k`, `top_p`.
        Returns: a `PIL.Image` (or a dict with `return_codes=True`) per input; a list for a batch.
        """
        preprocess_params, forward_params, postprocess_params = self._sanitize_parameters(**kwargs)
        preprocess_params = {**self._preprocess_params, **preprocess_params}
        forward_params = {**self._forward_params, **forward_params}
        postprocess_params = {**self._postprocess_params, **postprocess_params}
        default_query = preprocess_params.pop("query", None)
        records, single = _as_records(inputs)
        for record in records:
            record.setdefault("query", default_query)
        batch_size = batch_size or self._batch_size or DEFAULT_BATCH_SIZE
        results = []
        for start in range(0, len(records), batch_size):
            model_inputs = self.preprocess(records[start : start + batch_size], **preprocess_params)
            model_outputs = self.forward(model_inputs, **forward_params)
            results.extend(self.postprocess(model_outputs, **postprocess_params))
        return results[0] if single else results

    def preprocess(self, records: list[dict], max_history_items: int | None = None) -> dict:
        """Records -> the processor's left-padded batch of image-generation prompts (ending at `<answer>`)."""
        max_history_items = max_history_items or self.processor.image_generation_max_history_items
        resolved_histories = []
        for row, record in enumerate(records):
            where = f"input {row}" if len(records) > 1 else "input"
            query = record.get("query")
            if not isinstance(query, str) or not query.strip():
                raise ValueError(f"{where}: image generation needs a non-empty `query` string (e.g. the wanted "
                                 "item's title keywords or category)")
            history = record.get("history")
            if not history:
                raise ValueError(f"{where}: the history is empty; give at least one item id or item dict")
            resolved_histories.append([self._resolve_item(entry, f"{where} history[{n}]")
                                       for n, entry in enumerate(history)])
        self._encode_missing_codes([item for history in resolved_histories for item in history])
        prompts = []
        for row, (record, history) in enumerate(zip(records, resolved_histories)):
            usable = [item for item in history if item["image_codes"] is not None]
            if len(usable) < len(history):
                warnings.warn(f"input {row}: {len(history) - len(usable)} history item(s) have neither an image nor "
                              "image_codes and are skipped")
            if not usable:
                raise ValueError(f"input {row}: no history item has an image or image_codes; image generation shows "
                                 "each history item's codes")
            prompt_record = {"task": "imggen", "history": usable[-max_history_items:],
                             "target": dict(_PLACEHOLDER_TARGET), "query": record["query"]}
            prompts.append(self.processor.render_prompt(prompt_record))
        batch = self.processor(text=[p["text"] for p in prompts], images=[p["images"] for p in prompts],
                               padding_side="left")
        return {"model_inputs": dict(batch)}

    def _forward(self, model_inputs: dict, do_sample: bool = False, num_beams: int = 1, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None) -> dict:
        inputs = {key: value.to(self.device) for key, value in model_inputs["model_inputs"].items()}
        prompt_length = inputs["input_ids"].shape[1]
        num_codes = self.image_tokenizer.config.num_image_codes
        tokenizer = self.processor.tokenizer
        constraint = UniMPImageCodeLogitsProcessor(
            code_token_start_id=self.processor.image_code_token_start_id,
            num_image_code_tokens=self.processor.num_image_code_tokens,
            num_image_codes=num_codes,
            eos_token_id=tokenizer.eos_token_id,
            prompt_length=prompt_length,
        )
        sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p} if do_sample else {}
        generated = self.model.generate(
            **inputs, logits_processor=LogitsProcessorList([constraint]), max_new_tokens=num_codes + 1,
            do_sample=do_sample, num_beams=num_beams, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, **sampling,
        )
        codes = generated[:, prompt_length : prompt_length + num_codes] - self.processor.image_code_token_start_id
        if codes.shape[1] != num_codes or codes.min() < 0 or codes.max() >= self.processor.num_image_code_tokens:
            raise RuntimeError("generate returned an incomplete code grid despite the constraint; check that no other "
                               "logits processor forces tokens (e.g. a generation_config with forced/suppressed ids)")
        return {"codes": codes}  # (B, S)

    def postprocess(self, model_outputs: dict, output_size: tuple[int, int] | None = None,
                    return_codes: bool = False) -> list:
        codes = model_outputs["codes"]
        images = self.image_tokenizer.codes_to_images(codes, size=output_size)
        if not return_codes:
            return images
        return [{"image": image, "codes": row.tolist(), "code_string": self.image_tokenizer.codes_to_string(row)}
                for image, row in zip(images, codes.cpu())]

    # ------------------------------------------------------------------ helpers
    def _resolve_item(self, entry, where: str) -> dict:
        """An id or item dict -> {"item_id", "title", "attributes", "image", "image_codes"}; the catalogue fills
        what is missing."""
        if isinstance(entry, (str, int)) and not isinstance(entry, bool):
            entry = {"item_id": str(entry)}
        elif not isinstance(entry, Mapping):
            raise ValueError(f"{where}: expected an item id (str) or an item dict, got {type(entry).__name__}")
        item = dict(entry)
        item_id = item.get("item_id")
        if item_id is not None:
            item["item_id"] = item_id = str(item_id)
        if item_id is not None and (item.get("title") is None or item.get("image") is None):
            try:
                index = self.processor.item_index(item_id)
            except KeyError:
                if item.get("title") is None and item.get("image") is None and item.get("image_codes") is None:
                    raise
                index = None
            if index is not None:
                if item.get("title") is None:
                    item["title"] = self.processor.item_titles[index] or None
                if item.get("image") is None:
                    item["image"] = self.processor.item_images[index]
        item["attributes"] = [("Title", item.get("title"))]  # the imggen chunk shows only the title (§2.2 vi)
        source = item.get("image")
        try:
            item["image"] = load_image(source)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        if item["image"] is None and source is not None:
            warnings.warn(f"{where}: the image could not be decoded; the item is used without it")
        codes = item.get("image_codes")
        if codes is not None:
            item["image_codes"] = _parse_codes(codes, self.image_tokenizer, where)
        else:
            item["image_codes"] = None
        return item

    def _encode_missing_codes(self, items: list[dict]) -> None:
        """Encode, in one batch, the images of the items that came without `image_codes`."""
        pending = [item for item in items if item["image_codes"] is None and item["image"] is not None]
        if pending:
            codes = self.image_tokenizer.images_to_codes([item["image"] for item in pending]).cpu()  # (n, S)
            for item, row in zip(pending, codes):
                item["image_codes"] = row.tolist()


def _parse_codes(codes, image_tokenizer: UniMPImageTokenizer, where: str) -> list[int]:
    try:
        if isinstance(codes, str):
            return image_tokenizer.string_to_codes(codes).tolist()
        codes = torch.as_tensor(codes, dtype=torch.long).flatten()
        image_tokenizer.codes_to_string(codes)  # validates the count and the range
        return codes.tolist()
    except ValueError as error:
        raise ValueError(f"{where}: invalid image_codes: {error}") from None


__all__ = ["UniMPImageCodeLogitsProcessor", "UniMPImageGenerationPipeline"]
