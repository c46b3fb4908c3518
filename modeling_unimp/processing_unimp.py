"""UniMPProcessor: tokenizer + PIL image processor + the item catalogue (reference §1.5, §2.1).

Self-contained for remote code: imports torch, transformers, PIL and same-folder modules only.
"""

import numbers
import re
import warnings
from collections.abc import Sequence

import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, PreTrainedTokenizerFast, ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature
from transformers.tokenization_utils_base import AddedToken

from .image_utils import load_image
from .prompt_templates import (
    ANSWER_TOKEN,
    CONTEXT_ORDERS,
    END_OF_CHUNK_TOKEN,
    IMAGE_TOKEN,
    RATING_TOKENS,
    SELECTION_TOKENS,
    image_code_token,
    item_token,
    render_record,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # reference §1.2: CLIP normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_MAX_HISTORY_ITEMS = 10  # history items per prompt unless training sets another window
DEFAULT_IMAGE_GENERATION_MAX_HISTORY_ITEMS = 2  # the reference's image-generation history (§2.2 vi: 2 for img_gen)
GENERATION_MAX_NEW_TOKENS = 64  # a bare generate(): a rating token + a 30-word explanation (pipeline_unimp default)
_BOS_TOKEN, _PAD_TOKEN = "<|endoftext|>", "<|pad|>"
# `<item_k>` / `<img_c>` strings in a prompt: the tokenizer knows only k < num_items (c < K); others would split into
# characters and the prompt would silently name no item
_NUMBERED_TOKEN_PATTERN = re.compile(r"<(item|img)_(\d+)>")


def _history_window(name: str, value, default: int) -> int:
    """`value` as a history window (an integer >= 1), or `default` when None; `ValueError` naming `name`."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1 (the history window), got {value!r}")
    return int(value)


def make_image_processor(image_size: int) -> CLIPImageProcessorPil:
    """Bicubic resize straight to image_size² (no aspect-preserving crop), CLIP mean/std (reference §1.2).

    PIL-based: torchvision does not import on the target machines (hf_stack_notes §0).
    """
    return CLIPImageProcessorPil(
        size={"height": image_size, "width": image_size},
        do_center_crop=False,
        resample=Image.Resampling.BICUBIC,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )


def train_catalogue_tokenizer(texts: Sequence[str], vocab_size: int = 4000) -> PreTrainedTokenizerFast:
    """Train the tiny default's byte-level BPE tokenizer on the catalogue text with `tokenizers`.

    Args:
        texts: item texts (titles, attributes, reviews) to learn merges from.
        vocab_size: target vocabulary size before UniMP's added tokens.
    Returns: a fast tokenizer with BOS = EOS = `<|endoftext|>` and pad `<|pad|>` (GPT-NeoX convention, §1.5).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[_BOS_TOKEN, _PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=_BOS_TOKEN, eos_token=_BOS_TOKEN, pad_token=_PAD_TOKEN
    )


class UniMPProcessor(ProcessorMixin):
    r"""Turns UniMP prompts (text with one `<image>` per item, plus the items' images) into model inputs, and
    owns the item catalogue: one `<item_k>` token per catalogue item, mapped back to real item ids.

    Example:
        >>> from PIL import Image
        >>> tokenizer = train_catalogue_tokenizer(["Toy Story (1995) Animation Comedy"], vocab_size=300)
        >>> processor = UniMPProcessor.from_catalogue(tokenizer, ["ml_1", "ml_2"], ["Toy Story", "Heat"], image_size=32)
        >>> batch = processor(text=["<image> Toy Story <answer> <item_0> <|endofchunk|>"],
        ...                   images=[[Image.new("RGB", (40, 60), "red")]])
        >>> tuple(batch["pixel_values"].shape), tuple(batch["image_attention_mask"].shape[::2])
        ((1, 1, 3, 32, 32), (1, 1))
        >>> processor.decode_items([processor.item_token_start_id + 1])
        ['ml_2']
    """

    _auto_class = "AutoProcessor"  # save_pretrained copies this file: AutoProcessor works with remote code

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        item_ids: list[str] | None = None,
        item_titles: list[str] | None = None,
        item_images: list[str | None] | None = None,
        num_image_code_tokens: int = 0,
        item_attributes: list[list[list[str]]] | None = None,
        context_order: str = "paper",
        content_history_items: int | None = None,
        max_history_items: int | None = None,
        vq_model_name_or_path: str | None = None,
        image_generation_max_history_items: int | None = None,
        training_data_licences: dict[str, str] | None = None,
        max_position_embeddings: int | None = None,
        has_repeat_interactions: bool | None = None,
        **kwargs,
    ):
        super().__init__(image_processor, tokenizer, **kwargs)
        self.num_image_code_tokens = int(num_image_code_tokens)  # K `<img_c>` tokens of the image-generation task
        if context_order not in CONTEXT_ORDERS:
            raise ValueError(f"context_order must be one of {CONTEXT_ORDERS}, got {context_order!r}")
        self.context_order = context_order  # the rec/search history layout the model was trained with
        if content_history_items is not None and int(content_history_items) < 0:
            raise ValueError(f"content_history_items must be >= 0 or None, got {content_history_items}")
        # rec/search/exp: only the last N history items show image + text, older ones are their token (None: all)
        self.content_history_items = None if content_history_items is None else int(content_history_items)
        # the history window (latest items) the model was trained with: the one source at inference (pipelines,
        # recipes.evaluate); training sets it from UniMPTrainingArguments.max_history_items
        self.max_history_items = _history_window("max_history_items", max_history_items, DEFAULT_MAX_HISTORY_ITEMS)
        # the shorter window of the image-generation prompts (recipes.train_image_generation sets it; the
        # image-generation pipeline reads it)
        self.image_generation_max_history_items = _history_window(
            "image_generation_max_history_items", image_generation_max_history_items,
            DEFAULT_IMAGE_GENERATION_MAX_HISTORY_ITEMS)
        # image generation: the VQ image tokenizer (UniMPImageTokenizer) that decodes `<img_c>` codes, a path or a
        # subfolder of the checkpoint (a name without "tokenizer": ProcessorMixin would take it for a sub-processor)
        self.vq_model_name_or_path = vq_model_name_or_path
        # dataset name -> its terms of use, recorded by training (recipes.common.record_training_data_licence): the
        # catalogue carries the data's item ids and titles, so push_to_hub refuses a public push where they forbid it
        self.training_data_licences = dict(training_data_licences or {})
        # the text model's positions (prepare_model records them): a longer prompt is truncated with a warning
        self.max_position_embeddings = None if max_position_embeddings is None else int(max_position_embeddings)
        # whether the training split had repeated user-item pairs (recipes.train records it); None: unknown. The
        # recommendation pipeline excludes seen items by default when it is False (`default_exclude_history`)
        self.has_repeat_interactions = None if has_repeat_interactions is None else bool(has_repeat_interactions)
        self.item_ids = list(item_ids or [])
        self.item_titles = list(item_titles) if item_titles is not None else [""] * len(self.item_ids)
        self.item_images = list(item_images) if item_images is not None else [None] * len(self.item_ids)
        # the ordered (key, value) text attributes each item was trained with, so an id alone renders the same
        # chunk at inference as in training (JSON keeps them as [key, value] lists)
        self.item_attributes = (
            [[[str(key), "" if value is None else str(value)] for key, value in pairs] for pairs in item_attributes]
            if item_attributes is not None else None
        )
        lengths = [len(self.item_ids), len(self.item_titles), len(self.item_images)]
        lengths += [len(self.item_attributes)] if self.item_attributes is not None else []
        if len(set(lengths)) != 1:
            raise ValueError(
                f"item_ids, item_titles, item_images and item_attributes have {lengths} entries; each needs one "
                "entry per catalogue item"
            )
        self._item_index = {item_id: index for index, item_id in enumerate(self.item_ids)}
        if len(self._item_index) != len(self.item_ids):
            raise ValueError("item_ids contains duplicates; each catalogue item needs one id")

    # ------------------------------------------------------------------ catalogue and vocabulary
    @classmethod
    def from_catalogue(
        cls,
        tokenizer: PreTrainedTokenizerFast,
        item_ids: Sequence[str],
        item_titles: Sequence[str] | None = None,
        item_images: Sequence[str | None] | None = None,
        item_attributes: Sequence[Sequence[tuple[str, str]]] | None = None,
        *,
        image_size: int = 224,
        image_processor=None,
        num_image_code_tokens: int = 0,
        context_order: str = "paper",
        content_history_items: int | None = None,
        max_history_items: int | None = None,
    ) -> "UniMPProcessor":
        """Add UniMP's tokens to `tokenizer` (reference §1.5) and build the processor.

        The `<item_k>` tokens are added after the fixed tokens, so they form one contiguous id range (fast exact
        ranking); `num_image_code_tokens` > 0 (the image tokenizer's codebook size K) then adds `<img_0>` ...
        `<img_{K-1}>`, another contiguous range, for user-guided image generation (issue 7, reference §2.2 vi).
        Added tokens strip the space on their left, so `<answer> <item_3>` is exactly two tokens and the item
        token directly follows `<answer>`; a code string `<img_3> <img_41>` is exactly two tokens.
        `context_order` ("paper" | "next_item", prompt_templates.CONTEXT_ORDERS) is the rec/search history layout
        the model trains with, and `content_history_items` how many of the latest rec/search/exp history items show
        their content (None: all; older ones are their item token alone, exp: token + rating), and
        `max_history_items` the history window (None: DEFAULT_MAX_HISTORY_ITEMS); all three are saved with the
        processor so that prompts at inference match training.
        """
        special = [IMAGE_TOKEN, END_OF_CHUNK_TOKEN, ANSWER_TOKEN]
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [AddedToken(t, lstrip=True, normalized=False) for t in special]}
        )
        if tokenizer.pad_token is None:  # RedPajama/SmolLM-style tokenizers may have none (reference §1.5)
            tokenizer.add_special_tokens({"pad_token": AddedToken(_PAD_TOKEN, normalized=False)})
        if tokenizer.bos_token is None:
            tokenizer.bos_token = tokenizer.eos_token
        plain = [*RATING_TOKENS, *SELECTION_TOKENS]
        tokenizer.add_tokens([AddedToken(t, lstrip=True, normalized=False) for t in plain])
        tokenizer.add_tokens([AddedToken(item_token(k), lstrip=True, normalized=False) for k in range(len(item_ids))])
        if num_image_code_tokens < 0:
            raise ValueError(f"num_image_code_tokens must be >= 0 (the image tokenizer's codebook size), got "
                             f"{num_image_code_tokens}")
        tokenizer.add_tokens(
            [AddedToken(image_code_token(c), lstrip=True, normalized=False) for c in range(num_image_code_tokens)]
        )
        return cls(
            image_processor=image_processor or make_image_processor(image_size),
            tokenizer=tokenizer,
            item_ids=[str(i) for i in item_ids],
            item_titles=list(item_titles) if item_titles is not None else None,
            item_images=list(item_images) if item_images is not None else None,
            item_attributes=list(item_attributes) if item_attributes is not None else None,
            num_image_code_tokens=num_image_code_tokens,
            context_order=context_order,
            content_history_items=content_history_items,
            max_history_items=max_history_items,
        )

    @property
    def default_exclude_history(self) -> bool:
        """True when the training data had no repeated user-item pairs (a seen item is never the answer), else
        False (also when unknown: processors saved before it was recorded keep the sequential convention)."""
        return self.has_repeat_interactions is False

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def item_token_start_id(self) -> int | None:
        if not self.item_ids:
            return None
        return self.tokenizer.convert_tokens_to_ids(item_token(0))

    @property
    def image_code_token_start_id(self) -> int | None:
        """Vocabulary id of `<img_0>`; code c is `image_code_token_start_id + c`. None without code tokens."""
        if not self.num_image_code_tokens:
            return None
        return self.tokenizer.convert_tokens_to_ids(image_code_token(0))

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    def model_token_ids(self) -> dict[str, int | None]:
        """The UniMPConfig fields this processor decides (special token ids and the item range)."""
        start = self.item_token_start_id
        if start is not None and self.tokenizer.convert_tokens_to_ids(item_token(self.num_items - 1)) != (
            start + self.num_items - 1
        ):
            raise ValueError("the <item_k> tokens are not contiguous in the vocabulary; rebuild the processor")
        code_ids = {}
        if self.num_image_code_tokens:  # only processors built with code tokens record them (issue 7)
            code_start = self.image_code_token_start_id
            last = self.tokenizer.convert_tokens_to_ids(image_code_token(self.num_image_code_tokens - 1))
            if last != code_start + self.num_image_code_tokens - 1:
                raise ValueError("the <img_c> tokens are not contiguous in the vocabulary; rebuild the processor")
            code_ids = {"image_code_token_start_id": code_start, "num_image_code_tokens": self.num_image_code_tokens}
        return {
            "image_token_id": self.image_token_id,
            "end_of_chunk_token_id": self.tokenizer.convert_tokens_to_ids(END_OF_CHUNK_TOKEN),
            "answer_token_id": self.tokenizer.convert_tokens_to_ids(ANSWER_TOKEN),
            "item_token_start_id": start,
            "num_items": self.num_items,
            "pad_token_id": self.tokenizer.pad_token_id,
            "bos_token_id": self.tokenizer.bos_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
            **code_ids,
        }

    def prepare_model(self, model) -> None:
        """Resize the model's embeddings and head to this vocabulary and record the token ids in its config
        (and its generation config, whose eos ids are EOS and `<|endofchunk|>`, the end of every answer, with
        `max_new_tokens` = GENERATION_MAX_NEW_TOKENS), so a checkpoint decodes its answers with this processor."""
        if model.get_input_embeddings().num_embeddings != len(self.tokenizer):
            model.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        token_ids = self.model_token_ids()
        text_config = model.config.get_text_config()  # what Trainer's align_special_tokens compares with
        if getattr(text_config, "max_position_embeddings", None):
            self.max_position_embeddings = int(text_config.max_position_embeddings)
        for name, value in token_ids.items():
            setattr(model.config, name, value)
            if name in ("pad_token_id", "bos_token_id", "eos_token_id") and text_config is not model.config:
                setattr(text_config, name, value)
            if name in ("pad_token_id", "bos_token_id") and model.generation_config is not None:
                setattr(model.generation_config, name, value)
        if model.generation_config is not None:  # a bare generate() stops where an answer ends (issue 15)
            model.generation_config.eos_token_id = [token_ids["eos_token_id"], token_ids["end_of_chunk_token_id"]]
            model.generation_config.max_new_tokens = GENERATION_MAX_NEW_TOKENS

    def add_items(self, item_ids: Sequence[str], item_titles: Sequence[str] | None = None,
                  item_images: Sequence | None = None,
                  item_attributes: Sequence[Sequence[tuple[str, str]]] | None = None) -> list[int]:
        """Append items to the catalogue (cold-start items, issue 12): one new `<item_k>` token each, right after the
        last item token, so the item ids stay one contiguous range. Then call `prepare_model` (or use
        `item_content_unimp.add_catalogue_items`, which also gives a content model their vectors).

        Args:
            item_ids: m new ids (not yet in the catalogue).
            item_titles, item_images, item_attributes: per new item (None: empty title, no image, a `Title`).
                Images are stored only as paths (others are kept as None: the processor saves JSON).
        Returns: the m new catalogue indices.
        """
        item_ids = [str(item_id) for item_id in item_ids]
        count = len(item_ids)
        for name, values in (("item_titles", item_titles), ("item_images", item_images),
                             ("item_attributes", item_attributes)):
            if values is not None and len(values) != count:
                raise ValueError(f"{name} has {len(values)} entries for {count} new item_ids")
        seen = set(self._item_index)
        for position, item_id in enumerate(item_ids):
            if item_id in seen:
                raise ValueError(f"new item {position} ({item_id!r}) is already in the catalogue or repeated")
            seen.add(item_id)
        if self.item_ids and self.tokenizer.convert_tokens_to_ids(item_token(self.num_items - 1)) != (
                len(self.tokenizer) - 1):
            raise ValueError("tokens follow <item_k> in this vocabulary (e.g. <img_c> image codes): new item tokens "
                             "would not be contiguous with the catalogue's; rebuild the processor with all items")
        self.tokenizer.add_tokens([AddedToken(item_token(k), lstrip=True, normalized=False)
                                   for k in range(self.num_items, self.num_items + count)])
        titles = list(item_titles) if item_titles is not None else [""] * count
        images = [image if isinstance(image, str) else None
                  for image in (item_images if item_images is not None else [None] * count)]
        first = self.num_items
        self.item_ids += item_ids
        self.item_titles += [title or "" for title in titles]
        self.item_images += images
        if self.item_attributes is None and item_attributes is not None:  # keep the new items' attributes: the
            # stored items get the one attribute an id renders with today, their title
            self.item_attributes = [[["Title", title]] if title else [] for title in self.item_titles[:first]]
        if self.item_attributes is not None:
            attributes = item_attributes if item_attributes is not None else [
                [("Title", title)] if title else [] for title in titles]
            self.item_attributes += [[[str(key), "" if value is None else str(value)] for key, value in pairs]
                                     for pairs in attributes]
        self._item_index.update({item_id: first + n for n, item_id in enumerate(item_ids)})
        return list(range(first, first + count))

    def item_index(self, item_id: str) -> int:
        """Catalogue index k of a real item id; `KeyError` naming it when unknown."""
        try:
            return self._item_index[str(item_id)]
        except KeyError:
            message = f"item id {item_id!r} is not in the processor's catalogue of {self.num_items} items"
            raise KeyError(message) from None

    def decode_items(self, token_ids: Sequence[int]) -> list[str | None]:
        """Map generated token ids back to real item ids (None for a token that is not an item)."""
        start = self.item_token_start_id
        out = []
        for token_id in token_ids:
            k = int(token_id) - start if start is not None else -1
            out.append(self.item_ids[k] if 0 <= k < self.num_items else None)
        return out

    def render_prompt(self, record: dict, **template_kwargs) -> dict:
        """Render an inference prompt: `render_record` in its evaluation form with this processor's catalogue.

        The prompt ends right after the final `<answer>` and history labels keep their `<answer>` marker, as in
        the evaluation prompts of `recipes` (reference §8.7). Fields that only the answer needs may be omitted:
        a rec/search `target` (the prompt never shows it), an exp target's `rating`, select `answer_slots`.

        Args:
            record: a `render_record` record (`task`, `history` of item dicts, task fields such as `query`).
            template_kwargs: other `render_record` arguments (word budgets, task_weights).
        Returns: {"text", "images", "task", "task_weight"}, ready for `__call__(..., padding_side="left")`.
        """
        record = dict(record)
        task, history = record.get("task"), record.get("history") or []
        if task in ("rec", "search") and record.get("target") is None and history:
            record["target"] = history[-1]  # placeholder: the evaluation form stops before the answer
        elif task == "exp" and isinstance(record.get("target"), dict) and record["target"].get("rating") is None:
            record["target"] = {**record["target"], "rating": 1}
        elif task == "select" and not record.get("answer_slots"):
            record["answer_slots"] = [0]
        rendered = render_record(
            record, "test", item_index=self._item_index, history_answer_marker=True,
            **{"context_order": self.context_order, "content_history_items": self.content_history_items,
               **template_kwargs},
        )
        rendered.pop("answer")
        return rendered

    # ------------------------------------------------------------------ encoding
    def __call__(
        self,
        text: str | list[str] | None = None,
        images: list | None = None,
        *,
        padding_side: str = "right",
        add_bos: bool = True,
        add_eos: bool = False,
        return_tensors: str | None = "pt",
        return_pixel_values: bool = True,
        padding: bool | str = True,
        truncation: bool | str = False,
        max_length: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Encode prompts and their images.

        Args:
            text: one prompt or a list of B prompts, each with one `<image>` per item.
            images: per prompt, the list of its items' images in order (PIL images, file paths, or None for an
                item without an image: its tokens then get no cross-attention).
            padding_side: "right" for training, "left" for generation.
            add_bos / add_eos: BOS is prepended to train and eval prompts alike (not copying the mismatch of
                reference §2.1); EOS ends training targets.
            return_pixel_values: False skips decoding and preprocessing (the caller brings encoded images, e.g.
                `UniMPImageCache`); `image_attention_mask` then treats every non-None image as present.
            return_tensors: "pt" (default), "np", or None (nested Python lists).
            padding: True / "longest" (default), "max_length" (to `max_length`), or False (no padding: rows of
                different lengths need `return_tensors=None`).
            truncation, max_length: with `truncation=True`, a prompt longer than `max_length` tokens loses its
                OLDEST history items first, whole `<|endofchunk|>` chunks with their images; the question and the
                answer marker (the chunk holding the last `<answer>`) are never cut. A prompt longer than the
                model's positions (`max_position_embeddings`, else the tokenizer's `model_max_length`) is truncated
                the same way, with a warning.
        Returns: `input_ids`, `attention_mask` (B, T); `pixel_values` (B, N, 3, H, W) zero-padded to the batch's
            max N; `image_attention_mask` (B, T, N), True where token t uses image n.
        """
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        if padding not in (True, False, "longest", "max_length", "do_not_pad"):
            raise ValueError(f"padding must be True, False, 'longest' or 'max_length', got {padding!r}")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral)
                                       or max_length < 1):
            raise ValueError(f"max_length must be an integer >= 1, got {max_length!r}")
        if truncation not in (False, True, "longest_first", "only_first", "do_not_truncate"):
            raise ValueError(f"truncation must be True or False, got {truncation!r}")
        truncate = truncation not in (False, "do_not_truncate")
        if truncate and max_length is None:
            raise ValueError("truncation=True needs max_length (the token budget per prompt)")
        if padding == "max_length" and max_length is None:
            raise ValueError("padding='max_length' needs max_length")
        if text is None:
            raise ValueError("UniMPProcessor needs `text`")
        texts = [text] if isinstance(text, str) else list(text)
        if images is None:
            images = [[] for _ in texts]
        elif isinstance(text, str) and (not images or not isinstance(images[0], (list, tuple))):
            images = [images]
        if len(images) != len(texts):
            raise ValueError(f"{len(texts)} prompts but {len(images)} image lists; pass one list per prompt")
        token_lists, images = [], [list(row_images) for row_images in images]
        for row, (prompt, row_images) in enumerate(zip(texts, images)):
            self._check_numbered_tokens(prompt, row)
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            num_image_tokens = ids.count(self.image_token_id)
            if num_image_tokens != len(row_images):
                raise ValueError(
                    f"prompt {row} has {num_image_tokens} <image> tokens but {len(row_images)} images; "
                    "give one image (or None) per item"
                )
            extra = int(add_bos) + int(add_eos)
            if truncate and len(ids) + extra > max_length:
                ids, dropped = self._drop_oldest_chunks(ids, max_length - extra, row)
                del row_images[:dropped]
            positions = self.model_max_positions
            if positions is not None and len(ids) + extra > positions:
                length = len(ids) + extra
                ids, dropped = self._drop_oldest_chunks(ids, positions - extra, row)
                del row_images[:dropped]
                warnings.warn(f"prompt {row} has {length} tokens, more than the model's {positions} positions: its "
                              f"oldest history items were dropped ({len(ids) + extra} tokens left)")
            ids = ([self.tokenizer.bos_token_id] if add_bos else []) + ids
            ids = ids + ([self.tokenizer.eos_token_id] if add_eos else [])
            token_lists.append(ids)
        lengths = [len(ids) for ids in token_lists]
        target = max(lengths)
        if padding == "max_length":
            target = max(target, max_length)
        batch = self._pad(token_lists, padding_side, target)
        batch.update(self._encode_images(images, batch["input_ids"], return_pixel_values))
        if padding in (False, "do_not_pad") and len(set(lengths)) > 1:
            if return_tensors is not None:
                raise ValueError("padding=False gives rows of different lengths; pass padding=True or "
                                 "return_tensors=None")
            rows = [slice(0, n) if padding_side == "right" else slice(target - n, target) for n in lengths]
            out = {key: [value[row][span].tolist() if key != "pixel_values" else value[row].tolist()
                         for row, span in enumerate(rows)] for key, value in batch.items()}
            return BatchFeature(out, tensor_type=None)
        if return_tensors == "np":
            batch = {key: value.numpy() for key, value in batch.items()}
        elif return_tensors is None:
            batch = {key: value.tolist() for key, value in batch.items()}
        return BatchFeature(batch, tensor_type=None)

    @property
    def model_max_positions(self) -> int | None:
        """The longest prompt the model takes: its `max_position_embeddings` when recorded (`prepare_model`), else
        the tokenizer's `model_max_length` unless that is the "no limit" sentinel; None when unknown."""
        if getattr(self, "max_position_embeddings", None):
            return self.max_position_embeddings
        limit = getattr(self.tokenizer, "model_max_length", None)
        return int(limit) if isinstance(limit, int) and limit < 10**12 else None

    def _drop_oldest_chunks(self, ids: list[int], budget: int, row: int) -> tuple[list[int], int]:
        """Drop whole history chunks (each ending at `<|endofchunk|>`), oldest first, until `ids` fits `budget`.

        Kept always: plain text before the first chunk's content (e.g. "User history:"), the chunk holding the last
        `<answer>` (the question and the answer marker) and all after it, and selection candidates. A leading
        `<answer>` left by a dropped chunk (the next_item layout) goes too.
        Returns: (the kept ids, the number of `<image>` tokens dropped: the row's oldest images).
        """
        end = self.tokenizer.convert_tokens_to_ids(END_OF_CHUNK_TOKEN)
        answer = self.tokenizer.convert_tokens_to_ids(ANSWER_TOKEN)
        image = self.image_token_id
        protected = {answer, image, end, *self.tokenizer.convert_tokens_to_ids(list(SELECTION_TOKENS))}
        start = self.item_token_start_id
        is_item = (lambda t: start <= t < start + self.num_items) if start is not None else (lambda t: False)
        last_answer = max((n for n, t in enumerate(ids) if t == answer), default=len(ids))
        preamble = 0  # plain text before the first item (no structural token in it)
        while preamble < len(ids) and ids[preamble] not in protected and not is_item(ids[preamble]):
            preamble += 1
        head, rest = ids[:preamble], ids[preamble:]
        last_answer -= preamble
        selection = set(self.tokenizer.convert_tokens_to_ids(list(SELECTION_TOKENS)))
        dropped_images = 0
        while len(head) + len(rest) > budget:
            chunk_end = rest.index(end) + 1 if end in rest else None
            if chunk_end is None or chunk_end > last_answer or selection & set(rest[:chunk_end]):
                raise ValueError(f"prompt {row} needs more than {budget} tokens without its history (the question "
                                 "and answer marker are never truncated); raise max_length or shorten the question")
            dropped_images += rest[:chunk_end].count(image)
            rest, last_answer = rest[chunk_end:], last_answer - chunk_end
            if rest and rest[0] == answer and last_answer > 0:  # next_item layout: the dropped item's label marker
                rest, last_answer = rest[1:], last_answer - 1
        return head + rest, dropped_images

    def _check_numbered_tokens(self, prompt: str, row: int) -> None:
        """`ValueError` for an `<item_k>` or `<img_c>` outside this processor's vocabulary."""
        for match in _NUMBERED_TOKEN_PATTERN.finditer(prompt):
            kind, number = match[1], int(match[2])
            count = self.num_items if kind == "item" else self.num_image_code_tokens
            if number >= count:
                what = "catalogue items" if kind == "item" else "image codes"
                known = f"<{kind}_0> to <{kind}_{count - 1}>" if count else f"no <{kind}_k> tokens"
                raise ValueError(f"prompt {row}: {match[0]} at character {match.start()} is not a token of this "
                                 f"processor ({count} {what}: {known}); an out-of-range token would be read as "
                                 "plain characters")

    def _pad(self, token_lists: list[list[int]], padding_side: str, length: int | None = None) -> dict:
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        length = length or max(len(ids) for ids in token_lists)
        input_ids = torch.full((len(token_lists), length), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(token_lists), length), dtype=torch.long)
        for row, ids in enumerate(token_lists):
            span = slice(0, len(ids)) if padding_side == "right" else slice(length - len(ids), length)
            input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, span] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def _encode_images(self, images: list[list], input_ids: torch.Tensor,
                       return_pixel_values: bool = True) -> dict[str, torch.Tensor]:
        max_images = max((len(row) for row in images), default=0)
        size = self.image_processor.size
        height, width = size["height"], size["width"]
        present = torch.zeros(len(images), max_images, dtype=torch.bool)
        if not return_pixel_values:
            for row, row_images in enumerate(images):
                present[row, : len(row_images)] = torch.tensor([image is not None for image in row_images])
            return {"image_attention_mask": self._image_attention_mask(input_ids, present)}
        pixel_values = torch.zeros(len(images), max_images, 3, height, width)
        # a (3, H, W) tensor is an image already preprocessed (UniMPImageCache); the rest is preprocessed in one call
        slots = [(row, slot, image) for row, row_images in enumerate(images) for slot, image in enumerate(row_images)
                 if image is not None]
        for row, slot, image in slots:
            if isinstance(image, torch.Tensor):
                if tuple(image.shape) != (3, height, width):
                    raise ValueError(f"prompt {row} image {slot}: a tensor image must be preprocessed pixel values "
                                     f"of shape (3, {height}, {width}), got {tuple(image.shape)}")
                pixel_values[row, slot], present[row, slot] = image, True
        raw = [(row, slot, image) for row, slot, image in slots if not isinstance(image, torch.Tensor)]
        values, decoded = self.preprocess_images([image for _, _, image in raw])
        for (row, slot, _), value, ok in zip(raw, values, decoded):
            if ok:
                pixel_values[row, slot], present[row, slot] = value, True
        return {"pixel_values": pixel_values, "image_attention_mask": self._image_attention_mask(input_ids, present)}

    def _image_attention_mask(self, input_ids: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """(B, T, N): token t uses image n iff n is its most recent <image> (reference §1.4), and image n exists."""
        image_index = (input_ids == self.image_token_id).cumsum(dim=-1) - 1  # (B, T)
        slots = torch.arange(present.shape[1])
        return (image_index.unsqueeze(-1) == slots) & present.unsqueeze(1)  # (B, T, N)

    def preprocess_images(self, images: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel values of images (PIL, paths, bytes), in one image-processor call.

        Args: images: n image references, none of them None.
        Returns: (n, 3, H, W) pixel values (zeros where an image does not decode) and the (n,) bool `decoded` mask;
            warns once with the count of images that do not decode (their items are treated as image-less).
        """
        size = self.image_processor.size
        pictures = [load_image(image) for image in images]
        decoded = torch.tensor([picture is not None for picture in pictures], dtype=torch.bool)
        values = torch.zeros(len(pictures), 3, size["height"], size["width"])
        valid = [picture for picture in pictures if picture is not None]
        if valid:
            values[decoded] = self.image_processor(valid, return_tensors="pt")["pixel_values"].to(values.dtype)
        if len(valid) < len(pictures):
            warnings.warn(f"{len(pictures) - len(valid)} image(s) could not be decoded; their items are treated as "
                          "image-less")
        return values, decoded

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "image_attention_mask"]


__all__ = ["DEFAULT_IMAGE_GENERATION_MAX_HISTORY_ITEMS", "DEFAULT_MAX_HISTORY_ITEMS", "UniMPProcessor",
           "make_image_processor", "train_catalogue_tokenizer"]
