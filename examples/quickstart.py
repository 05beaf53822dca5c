"""The quick start from Python: a hand-written ds.nn.Module trained by ds.Trainer on bundled digits.

python examples/quickstart.py [--run-dir runs/quickstart-py] [--resume auto | --overwrite]
"""

from __future__ import annotations

import argparse

import deepseek as ds
from deepseek import nn, optim
from deepseek.data import ResumableDataLoader, build_dataset


class DigitNet(ds.Module):
    """(N, 1, 8, 8) images -> (N, 10) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(64, 10)

    def forward(self, x):
        return self.classifier(self.features(x))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", default="runs/quickstart-py")
    again = parser.add_mutually_exclusive_group()  # a run directory that holds a run needs one of these
    again.add_argument("--resume", help="'auto' continues the run in --run-dir")
    again.add_argument("--overwrite", action="store_true", help="delete the earlier run in --run-dir first")
    args = parser.parse_args()

    ds.seed_everything(0)
    digits = build_dataset("digits")  # scikit-learn's bundled 8x8 digits, stratified 80/20 split
    train = ResumableDataLoader(digits.train, batch_size=64, shuffle=True, seed=0)
    val = ResumableDataLoader(digits.val, batch_size=256, shuffle=False)

    model = DigitNet()
    optimizer = optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    trainer = ds.Trainer(
        model,
        optimizer,
        loss_fn=nn.CrossEntropyLoss(),
        scheduler=lambda opt, total_steps: optim.WarmupCosine(opt, total_steps, warmup_steps=20),
        max_epochs=15,
        run_dir=args.run_dir,
        monitor="val/accuracy",
        mode="max",
        log_every_steps=50,
    )
    summary = trainer.fit(train, val, resume=args.resume, overwrite=args.overwrite)
    print(f"validation accuracy {summary['val']['accuracy']:.4f} after {summary['steps']} steps")


if __name__ == "__main__":
    main()
