"""UniMP training: the focal token-reweighted loss, trainable stages and the Trainer subclass (reference §3, §1.6)."""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainingArguments

from .modeling_unimp import IGNORE_INDEX
from .prompt_templates import DEFAULT_TASK_WEIGHTS

# Which submodules train in each stage (reference §1.6; STYLE.md §8.4: freezing is a recipe step).
TRAINABLE_MODULES = {
    # the paper: vision tower and LM blocks frozen; perceiver, cross-attention, input embeddings and head train.
    # The head is listed explicitly: the official code silently left it frozen under transformers >= 4.35 (§1.6).
    "paper": ("model.perceiver", "model.gated_cross_attn", "input_embeddings", "lm_head"),
    "full": ("",),  # everything; the tiny default, whose towers start from scratch
    "lora": ("model.perceiver",),  # plus LoRA adapters and the item rows, set up by apply_lora
}


def focal_token_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    token_weights: torch.Tensor | None = None,
    gamma: float = 2.0,
    num_items_in_batch: int | torch.Tensor | None = None,
    *,
    shift: bool = True,
) -> torch.Tensor:
    """Task-weighted focal next-token loss (reference §3.3-§3.4).

    For every supervised position t (labels shifted by one), with p_t the model's probability of the label:
        ℓ_t = w_t · (1 − p_t)^γ · (−log p_t)
    and the loss is Σ_t ℓ_t / n, where n is the number of supervised tokens across the whole gradient-accumulation
    batch (`num_items_in_batch`, as Trainer counts it) or, when None, in this micro-batch. The focal factor is not
    detached, as in the original (§3.3); γ = 0 with unit weights is exactly the mean cross-entropy.

    Args:
        logits: (B, T, V).
        labels: (B, T), -100 where unsupervised.
        token_weights: (B, T), the task weight λ per supervised token (context answers may carry their own);
            None means 1 everywhere.
        gamma: the focal exponent γ (2 in every released script).
        num_items_in_batch: the normaliser n.
        shift: False when `logits[:, t]` already predicts `labels[:, t]` (the caller gathered positions).
    Returns: a scalar tensor.
    """
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
        token_weights = token_weights[:, 1:] if token_weights is not None else None
    shift_logits = logits.float()
    shift_labels = labels
    supervised = shift_labels != IGNORE_INDEX
    log_probs = -F.cross_entropy(
        shift_logits.transpose(1, 2), shift_labels.clamp(min=0), reduction="none"
    )  # (B, T-1): log p_t
    per_token = -log_probs
    if gamma != 0:
        per_token = per_token * (1.0 - log_probs.exp()).pow(gamma)
    if token_weights is not None:
        per_token = per_token * token_weights.to(per_token.dtype)
    per_token = per_token * supervised
    normaliser = supervised.sum() if num_items_in_batch is None else num_items_in_batch
    normaliser = torch.as_tensor(normaliser, device=per_token.device, dtype=per_token.dtype).clamp(min=1)
    return per_token.sum() / normaliser


def set_trainable(model: nn.Module, stage: str) -> list[str]:
    """Freeze everything, then unfreeze the modules of `stage` ("paper", "full" or "lora").

    Returns the names of the trainable parameters (recipes log them; tests assert them).
    """
    if stage not in TRAINABLE_MODULES:
        raise ValueError(f"trainable_stage must be one of {sorted(TRAINABLE_MODULES)}, got {stage!r}")
    model.requires_grad_(False)
    for name in TRAINABLE_MODULES[stage]:
        if name == "input_embeddings":
            model.get_input_embeddings().requires_grad_(True)
        elif name == "lm_head":
            model.get_output_embeddings().requires_grad_(True)
        else:
            model.get_submodule(name).requires_grad_(True)
    base = getattr(model, "model", None)
    if hasattr(base, "item_encoder"):  # content-composed item tokens (issue 12): the composition always trains,
        base.item_encoder.requires_grad_(True)  # as the free item rows do in every stage
    if hasattr(base, "item_image_encoder"):  # the frozen snapshot that encodes items' images stays frozen
        base.item_image_encoder.requires_grad_(False)
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def lora_config_for(model: nn.Module, *, rank: int = 8, alpha: int = 16, dropout: float = 0.0):
    """A PEFT `LoraConfig` for UniMP: LoRA on the LM's linear layers and the gated cross-attention projections;
    the perceiver trains fully, and the item-token rows of the input embeddings and of the head train through
    PEFT's trainable tokens (so new items are learnable without unfreezing the whole vocabulary)."""
    from peft import LoraConfig

    config = model.config
    item_ids = list(config.item_token_ids)
    embedding_name = next(
        name for name, module in model.named_modules() if module is model.get_input_embeddings()
    ).rsplit(".", 1)[-1]
    trainable_tokens = {embedding_name: item_ids} if item_ids else None
    if trainable_tokens is not None and not config.tie_word_embeddings:
        trainable_tokens["lm_head"] = item_ids
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=(
            r".*language_model\.(layers|h)\.\d+\..*(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj"
            r"|query_key_value|dense|dense_h_to_4h|dense_4h_to_h|c_attn|c_proj|c_fc)"
            r"|.*gated_cross_attn\.\d+\.(q_proj|kv_proj|o_proj)"
        ),
        modules_to_save=["perceiver"] + (["item_encoder"] if config.uses_item_content else []),  # issue 12
        trainable_token_indices=trainable_tokens,
    )


@dataclass
class UniMPTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus UniMP's objective knobs (STYLE.md §5: each value lives in one place)."""

    # a JSON string on the command line (`--task_weights '{"rec": 2.0, "exp": 1.0}'`) becomes a dict, as for
    # TrainingArguments' own dict fields
    _VALID_DICT_FIELDS = [*TrainingArguments._VALID_DICT_FIELDS, "task_weights"]

    focal_gamma: float = field(default=2.0, metadata={"help": "Focal exponent γ of token re-weighting (§3.3)."})
    context_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of history-item answers (context reconstruction, §3.2); 0 is the ablation."},
    )
    task_weights: dict | str | None = field(  # `| str | None`: HfArgumentParser then reads a string (JSON)
        default_factory=lambda: dict(DEFAULT_TASK_WEIGHTS),
        metadata={"help": "Per-task weight λ_a (§3.4): λ_rec = 2, others 1. JSON on the command line."},
    )
    trainable_stage: str = field(default="full", metadata={"help": "paper | full | lora (§1.6)."})
    max_history_items: int | None = field(
        default=None,
        metadata={"help": "History window (latest items); saved with the processor, which every inference path reads. "
                          "None keeps the processor's (a checkpoint's own, else 10)."},
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "token_weights must reach compute_loss."})


class UniMPTrainer(Trainer):
    """`Trainer` whose loss is `focal_token_loss`; it only routes tensors to it (STYLE.md §8.8).

    Args:
        evaluation_fn: optional `model -> {metric: value}` used by `evaluate()` instead of the loss-based loop,
            e.g. exact full-ranking NDCG@10 on the validation split, so that `metric_for_best_model="ndcg@10"`
            and `load_best_model_at_end` select checkpoints on validation ranking quality.
        excluded_label_ids: optional vocabulary ids left out of the loss's softmax (their logits set to the dtype's
            minimum), e.g. the `<item_k>` tokens of items absent from the training split (`train_negatives: seen`,
            issue 12): training then neither raises nor lowers them, as for an item added after training. A
            supervised label among them is an error.
    """

    loss_is_scaled_for_ga = True  # we divide by num_items_in_batch, counted over the accumulated batch
    excluded_label_ids: torch.Tensor | None = None

    def __init__(self, *args, evaluation_fn=None, excluded_label_ids=None, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, UniMPTrainingArguments):  # plain TrainingArguments have no focal_gamma
            raise TypeError(f"UniMPTrainer needs UniMPTrainingArguments (focal_gamma, context_weight, task_weights), "
                            f"got {type(self.args).__name__}; pass args=UniMPTrainingArguments(...)")
        self.evaluation_fn = evaluation_fn
        self.excluded_label_ids = (torch.as_tensor(sorted(set(excluded_label_ids)), dtype=torch.long)
                                   if excluded_label_ids else None)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        if self.evaluation_fn is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        was_training = self.model.training
        self.model.eval()
        try:
            raw = self.evaluation_fn(self.model)
        finally:
            self.model.train(was_training)
        metrics = {f"{metric_key_prefix}_{key}": float(value) for key, value in raw.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        token_weights = inputs.pop("token_weights", None)
        # The head runs only on supervised (row, token) pairs: answer spans are a few percent of a user sentence,
        # and the (B, T, V) logits of the rest would dominate the step's cost.
        supervised = torch.zeros_like(labels, dtype=torch.bool)
        supervised[:, :-1] = labels[:, 1:] != IGNORE_INDEX  # position t predicts label t + 1
        outputs = model(**inputs, use_cache=False, logits_to_keep=supervised)
        next_labels = labels[:, 1:][supervised[:, :-1]].unsqueeze(0)  # (1, n), aligned with logits (n, V)
        weights = token_weights[:, 1:][supervised[:, :-1]].unsqueeze(0) if token_weights is not None else None
        logits = outputs.logits
        if self.excluded_label_ids is not None:
            excluded = self.excluded_label_ids.to(logits.device)
            clash = torch.isin(next_labels, excluded)
            if clash.any():
                raise ValueError(f"label token id {int(next_labels[clash][0])} is in excluded_label_ids: a token left "
                                 "out of the softmax cannot be a training target")
            logits = logits.index_fill(-1, excluded, torch.finfo(logits.dtype).min)
        loss = focal_token_loss(
            logits.unsqueeze(0), next_labels, weights, self.args.focal_gamma, num_items_in_batch, shift=False
        )
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; n already spans all ranks
        return (loss, outputs) if return_outputs else loss


__all__ = [
    "TRAINABLE_MODULES",
    "UniMPTrainer",
    "UniMPTrainingArguments",
    "focal_token_loss",
    "lora_config_for",
    "set_trainable",
]
