"""Preference tuning of the rec answer: softmax DPO (S-DPO, Chen et al., NeurIPS 2024) and sigmoid DPO over item tokens.

Built from TRL's DPO pieces on `UniMPTrainer`, not a `trl.DPOTrainer` subclass: DPOTrainer (trl 1.16) tokenizes a
`datasets.Dataset` of prompt/chosen/rejected texts, patches a fused LM head into the model's forward and scores each
(chosen, rejected) pair as two sequences, so N negatives cost 2N forward passes of the whole user sentence. An item is
ONE token here, so one forward pass gives the log-probabilities of the positive and of every negative at the answer
position. What TRL gives us: the loss (its `sigmoid` formula, checked against `DPOTrainer` in the tests), the PEFT
reference (`trl.trainer.utils.use_adapter`: the adapter-disabled model), `disable_dropout_in_model` and its
`rewards/*` metric names. Not carried by checkpoints, so it may import peft and trl (ARCHITECTURE.md).
"""

import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .modeling_unimp import IGNORE_INDEX
from .trainer_unimp import UniMPTrainer, UniMPTrainingArguments, focal_token_loss

LOSS_TYPES = ("sdpo", "sigmoid")


def softmax_dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """S-DPO loss per example, one positive against N negatives (Chen et al. 2024, eq. 6).

    With Δ(x) = log π(x) − log π_ref(x):
        ℓ = −log σ(−log Σ_j exp(β (Δ(r_j) − Δ(c))))
    For N = 1 this is −log σ(β (Δ(c) − Δ(r))), DPO's sigmoid loss (`trl.DPOTrainer`, loss_type "sigmoid").

    Args:
        chosen_logps, ref_chosen_logps: (B,) log-probabilities of the chosen item under the policy / reference.
        rejected_logps, ref_rejected_logps: (B, N) the same for the N rejected items.
        beta: β, the inverse temperature of the implicit reward.
    Returns: (B,) per-example losses.
    """
    chosen_ratio = chosen_logps - ref_chosen_logps  # (B,)
    rejected_ratio = rejected_logps - ref_rejected_logps  # (B, N)
    log_sum = torch.logsumexp(beta * (rejected_ratio - chosen_ratio.unsqueeze(-1)), dim=-1)  # (B,)
    return -F.logsigmoid(-log_sum)


def pairwise_dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Sigmoid DPO averaged over N (chosen, rejected_j) pairs: mean_j −log σ(β (Δ(c) − Δ(r_j))); N = 1 is plain DPO
    (what `trl.DPOTrainer` computes with one pair row per negative). Shapes as `softmax_dpo_loss`; returns (B,)."""
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    return -F.logsigmoid(beta * (chosen_ratio.unsqueeze(-1) - rejected_ratio)).mean(-1)


def sample_negatives(
    ref_item_scores: torch.Tensor,
    targets: torch.Tensor,
    popularity: torch.Tensor,
    num_negatives: int,
    *,
    hard_negative_fraction: float,
    hard_negative_top_k: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """N distinct negative items per example, never the target: round(N · hard_negative_fraction) hard negatives drawn
    uniformly from the reference model's top-k items, the rest drawn in proportion to training popularity.

    Args:
        ref_item_scores: (B, num_items) the reference model's item scores at the answer position.
        targets: (B,) catalogue index of each example's true next item.
        popularity: (num_items,) non-negative sampling weights (training interaction counts).
        num_negatives: N.
        hard_negative_fraction: share of hard negatives, in [0, 1].
        hard_negative_top_k: k, the size of the reference's top list the hard negatives come from.
        generator: a CPU generator, for reproducible draws.
    Returns: (B, N) int64 item indices on `ref_item_scores.device`.
    """
    scores = ref_item_scores.detach().float().cpu()
    batch_size, num_items = scores.shape
    targets = targets.cpu()
    num_hard = round(num_negatives * hard_negative_fraction)
    excluded = torch.zeros(batch_size, num_items, dtype=torch.bool)
    excluded[torch.arange(batch_size), targets] = True
    drawn = []
    if num_hard:
        top = scores.masked_fill(excluded, -math.inf).topk(min(hard_negative_top_k, num_items - 1), dim=-1).indices
        pick = torch.rand(top.shape, generator=generator).argsort(dim=-1)[:, :num_hard]  # uniform, no repeats
        hard = top.gather(1, pick)
        excluded.scatter_(1, hard, True)
        drawn.append(hard)
    if num_negatives - num_hard:
        weights = popularity.detach().float().cpu().clamp(min=0).expand(batch_size, -1).masked_fill(excluded, 0.0)
        available = int((weights > 0).sum(-1).min())
        if available < num_negatives - num_hard:
            raise ValueError(f"only {available} items with popularity > 0 are left to draw "
                             f"{num_negatives - num_hard} popularity negatives from; lower num_negatives or raise "
                             f"hard_negative_fraction")
        drawn.append(torch.multinomial(weights, num_negatives - num_hard, replacement=False, generator=generator))
    return torch.cat(drawn, dim=-1).to(ref_item_scores.device)


def target_answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B,) the position whose next-token logits predict each row's final answer (the last `<answer>` token).

    The final answer is the last run of supervised labels (the collator's target span, EOS included); its first label
    sits one position after the answer slot.

    Args: labels (B, T), -100 where unsupervised. Returns: (B,) int64.
    """
    supervised = labels != IGNORE_INDEX
    starts = supervised.clone()
    starts[:, 1:] &= ~supervised[:, :-1]  # first label of each span
    if not starts.any(-1).all():
        row = int((~starts.any(-1)).nonzero()[0])
        raise ValueError(f"batch row {row} has no supervised answer: preference tuning needs training-form rec prompts")
    positions = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
    return positions.masked_fill(~starts, -1).amax(-1) - 1


@dataclass
class UniMPPreferenceArguments(UniMPTrainingArguments):
    """`UniMPTrainingArguments` plus the preference objective; `beta` and `loss_type` keep `trl.DPOConfig`'s names."""

    loss_type: str = field(
        default="sdpo",
        metadata={"help": "sdpo: softmax DPO over the N negatives (S-DPO); sigmoid: DPO's sigmoid loss averaged over "
                          "N (chosen, negative) pairs (plain DPO at num_negatives=1)."},
    )
    beta: float = field(default=1.0, metadata={"help": "β of the implicit reward β·log π/π_ref (DPO, S-DPO)."})
    num_negatives: int = field(default=8, metadata={"help": "N rejected items per example."})
    hard_negative_fraction: float = field(
        default=0.5, metadata={"help": "Share of the N negatives drawn from the reference model's top-k; the rest "
                                       "are drawn in proportion to training popularity."},
    )
    hard_negative_top_k: int = field(default=50, metadata={"help": "k of the reference top-k list of hard negatives."})
    sft_weight: float = field(
        default=0.0, metadata={"help": "Weight of UniMPTrainer's focal loss on the same batch (answers and context "
                                       "reconstruction), added to the preference loss; 0 = preference only."},
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Dropout off in policy and reference (as TRL)."})

    def __post_init__(self):
        super().__post_init__()
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {self.num_negatives}")
        if not 0.0 <= self.hard_negative_fraction <= 1.0:
            raise ValueError(f"hard_negative_fraction must lie in [0, 1], got {self.hard_negative_fraction}")
        if round(self.num_negatives * self.hard_negative_fraction) > self.hard_negative_top_k:
            raise ValueError(f"hard_negative_top_k ({self.hard_negative_top_k}) is smaller than the number of hard "
                             f"negatives (num_negatives × hard_negative_fraction); raise it")
        if self.sft_weight < 0:
            raise ValueError(f"sft_weight must be >= 0, got {self.sft_weight}")


class UniMPPreferenceTrainer(UniMPTrainer):
    """`UniMPTrainer` whose loss is S-DPO or DPO of the rec answer against sampled negatives (+ optional focal loss).

    Batches are the training-form rec prompts of `UniMPDataCollator` (as `UniMPTrainer` reads them): chosen = the
    target item (the token after the last `<answer>`), rejected = `sample_negatives` drawn each step.

    Args:
        ref_model: the frozen reference (the supervised checkpoint loaded again). None with a PEFT model: the
            reference is the same model with its adapters disabled (TRL's convention).
        item_popularity: (num_items,) training interaction counts, the weights of popularity negatives.
        evaluation_fn: as `UniMPTrainer` (validation NDCG@10 for checkpoint selection).
    """

    def __init__(self, *args, ref_model: nn.Module | None = None, item_popularity: torch.Tensor, **kwargs):
        from peft import PeftModel
        from trl.trainer.utils import disable_dropout_in_model

        super().__init__(*args, **kwargs)
        if not isinstance(self.args, UniMPPreferenceArguments):
            raise TypeError(f"UniMPPreferenceTrainer needs UniMPPreferenceArguments (beta, num_negatives, ...), got "
                            f"{type(self.args).__name__}")
        self.is_peft = isinstance(self.model, PeftModel)
        if ref_model is None and not self.is_peft:
            raise ValueError("a full or paper-stage preference run needs ref_model (the supervised checkpoint, loaded "
                             "again); only a PEFT model can serve as its own reference with adapters disabled")
        if ref_model is self.model:
            raise ValueError("ref_model must be a separate copy of the model, not the model being trained")
        num_items = self.model.config.num_items
        if item_popularity.shape != (num_items,):
            raise ValueError(f"item_popularity must have shape ({num_items},), one count per catalogue item; got "
                             f"{tuple(item_popularity.shape)}")
        if self.args.num_negatives >= num_items:
            raise ValueError(f"num_negatives ({self.args.num_negatives}) must be below the catalogue size {num_items}")
        self.item_popularity = item_popularity
        if self.args.disable_dropout:
            disable_dropout_in_model(self.model)
        self.ref_model = None
        if ref_model is not None:
            ref_model.requires_grad_(False)
            if self.args.disable_dropout:
                disable_dropout_in_model(ref_model)
            self.ref_model = self.accelerator.prepare_model(ref_model.eval(), evaluation_mode=True)
        self.negative_generator = torch.Generator().manual_seed(self.args.seed)
        self._metrics = defaultdict(list)

    def reference_logits(self, inputs: dict, keep: torch.Tensor) -> torch.Tensor:
        """(n, V) reference next-token logits at the `keep` positions ((B, T) bool), without gradients."""
        with torch.no_grad():
            if self.ref_model is not None:
                return self.ref_model(**inputs, use_cache=False, logits_to_keep=keep).logits
            from trl.trainer.utils import use_adapter

            with use_adapter(self.accelerator.unwrap_model(self.model), adapter_name=None):
                return self.model(**inputs, use_cache=False, logits_to_keep=keep).logits

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        token_weights = inputs.pop("token_weights", None)
        rows = torch.arange(labels.shape[0], device=labels.device)
        answer = target_answer_positions(labels)  # (B,)
        answer_mask = torch.zeros_like(labels, dtype=torch.bool)
        answer_mask[rows, answer] = True
        supervised = torch.zeros_like(labels, dtype=torch.bool)
        supervised[:, :-1] = labels[:, 1:] != IGNORE_INDEX  # position t predicts label t + 1
        keep = supervised if args.sft_weight > 0 else answer_mask
        outputs = model(**inputs, use_cache=False, logits_to_keep=keep)  # logits (n, V) at the kept positions
        order = keep.flatten().cumsum(0).view_as(keep) - 1  # row of each kept position in the logits
        unwrapped = self.accelerator.unwrap_model(model)
        item_start, num_items = unwrapped.config.item_token_start_id, unwrapped.config.num_items
        targets = labels[rows, answer + 1] - item_start  # (B,) catalogue indices of the chosen items
        if ((targets < 0) | (targets >= num_items)).any():
            row = int(((targets < 0) | (targets >= num_items)).nonzero()[0])
            raise ValueError(f"batch row {row}: the final answer is not an item token; preference tuning needs rec "
                             f"prompts whose answer is one <item_k>")
        # Full-vocabulary log-probabilities (π of the item token); the DPO terms use only differences at one position.
        policy = outputs.logits[order[rows, answer]].float().log_softmax(-1)[:, item_start : item_start + num_items]
        reference = self.reference_logits(inputs, answer_mask).float().log_softmax(-1)
        reference = reference[:, item_start : item_start + num_items]  # (B, num_items)
        negatives = sample_negatives(
            reference, targets, self.item_popularity, args.num_negatives,
            hard_negative_fraction=args.hard_negative_fraction, hard_negative_top_k=args.hard_negative_top_k,
            generator=self.negative_generator,
        )  # (B, N)
        chosen, rejected = policy[rows, targets], policy.gather(1, negatives)
        ref_chosen, ref_rejected = reference[rows, targets], reference.gather(1, negatives)
        loss_fn = softmax_dpo_loss if args.loss_type == "sdpo" else pairwise_dpo_loss
        preference = loss_fn(chosen, rejected, ref_chosen, ref_rejected, args.beta).mean()
        if num_items_in_batch is not None:  # training step: a mean over the accumulated batch, like the focal term
            preference = preference / self.current_gradient_accumulation_steps
        loss = preference
        if args.sft_weight > 0:
            next_labels = labels[:, 1:][supervised[:, :-1]].unsqueeze(0)  # (1, n), aligned with logits (n, V)
            weights = token_weights[:, 1:][supervised[:, :-1]].unsqueeze(0) if token_weights is not None else None
            focal = focal_token_loss(outputs.logits.unsqueeze(0), next_labels, weights, args.focal_gamma,
                                     num_items_in_batch, shift=False)
            if args.average_tokens_across_devices and num_items_in_batch is not None:
                focal = focal * self.accelerator.num_processes  # as UniMPTrainer: n already spans all ranks
            loss = loss + args.sft_weight * focal
        self._log_rewards(chosen - ref_chosen, rejected - ref_rejected)
        return (loss, outputs) if return_outputs else loss

    def _log_rewards(self, chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor) -> None:
        """TRL's DPO metrics: implicit rewards β·log π/π_ref, their margin, and how often the chosen item wins."""
        beta = self.args.beta
        chosen, rejected = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
        self._metrics["rewards/chosen"].append(chosen.mean().item())
        self._metrics["rewards/rejected"].append(rejected.mean().item())
        self._metrics["rewards/margins"].append((chosen.unsqueeze(-1) - rejected).mean().item())
        self._metrics["rewards/accuracies"].append((chosen > rejected.amax(-1)).float().mean().item())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # training logs carry the averages since the last log
            logs.update({key: sum(values) / len(values) for key, values in self._metrics.items() if values})
            self._metrics.clear()
        super().log(logs, start_time)


__all__ = [
    "LOSS_TYPES",
    "UniMPPreferenceArguments",
    "UniMPPreferenceTrainer",
    "pairwise_dpo_loss",
    "sample_negatives",
    "softmax_dpo_loss",
    "target_answer_positions",
]
