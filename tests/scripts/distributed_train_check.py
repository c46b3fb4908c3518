"""Train the tiny UniMP for a few steps with a fixed global batch; run alone or under torchrun (gloo, CPU).

Usage: python tests/scripts/distributed_train_check.py OUT.pt PER_DEVICE_BATCH   (or via torch.distributed.run)
Writes the summed SGD updates (rank 0) so the test can compare 1 process against 2: with plain SGD and
no clipping an update is lr times the gradient, so rounding-level differences of the all-reduce stay rounding-level
(Adam would scale them up to full-size steps, which then depend on the CPU's kernels).
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import TINY_CATALOGUE, make_tiny_config  # noqa: E402
from PIL import Image  # noqa: E402

from modeling_unimp import (  # noqa: E402
    UniMPForConditionalGeneration,  # noqa: E402
    UniMPProcessor,
    train_catalogue_tokenizer,
)
from modeling_unimp.trainer_unimp import UniMPTrainer, UniMPTrainingArguments  # noqa: E402
from processing import UniMPDataCollator  # noqa: E402

EXAMPLES = [
    {"text": f"<image> Title Toy Story <answer> <item_{i % 3}> <|endofchunk|> What next? <answer> <item_{(i + 1) % 3}>",
     "images": [Image.new("RGB", (32, 32), (40 * i % 255, 90, 200))], "task_weight": 2.0 if i % 2 else 1.0}
    for i in range(8)
]


def main(out_path: str, per_device_batch: int) -> None:
    torch.manual_seed(0)
    tokenizer = train_catalogue_tokenizer(["Title Toy Story Genre Animation Comedy", "What next?"] * 5, 300)
    processor = UniMPProcessor.from_catalogue(tokenizer, image_size=32, **TINY_CATALOGUE)
    torch.manual_seed(0)
    model = UniMPForConditionalGeneration(make_tiny_config(gate_init=0.5))
    processor.prepare_model(model)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = UniMPTrainingArguments(
        output_dir=str(Path(out_path).parent / "run"), per_device_train_batch_size=per_device_batch, max_steps=2,
        learning_rate=0.1, optim="sgd", max_grad_norm=0.0, weight_decay=0.0,
        report_to=[], use_cpu=True, save_strategy="no", seed=0, data_seed=0,
        ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None, dataloader_drop_last=True,
        lr_scheduler_type="constant", disable_tqdm=True,
    )
    trainer = UniMPTrainer(model=model, args=args, train_dataset=EXAMPLES, data_collator=UniMPDataCollator(processor))
    trainer.train()
    if trainer.is_world_process_zero():
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        state = {name: start[name] - p.detach() for name, p in unwrapped.named_parameters()}
        torch.save({"params": state, "world_size": args.world_size, "loss": trainer.state.log_history[-1]}, out_path)
    if torch.distributed.is_initialized():  # a clean gloo teardown: without it a rank could abort at exit
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        # Freeing DDP's Reducer afterwards can deadlock: ~ProcessGroupGloo joins its worker thread while holding the
        # GIL, and that thread waits for the GIL to free a finished barrier's tensors (py-spy, 2026-11-30: a rank hung
        # there for 15 min at load 5). Everything is written; leave without running destructors.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
