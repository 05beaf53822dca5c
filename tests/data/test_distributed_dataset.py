"""DistributedDataset: disjoint rank shards, per-sample seeded augmentation, exact mid-epoch resume."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from deepseek.data import DistributedDataset, Pipeline

DATA = TensorDataset(torch.arange(40, dtype=torch.float32).view(40, 1).repeat(1, 4), torch.arange(40))


def pipeline() -> Pipeline:
    return Pipeline([{"type": "Jitter", "params": {"sigma": 0.5}}])


def epoch(loader, e):
    loader.set_epoch(e)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_two_ranks_see_each_sample_once_per_epoch():
    ranks = [DistributedDataset(DATA, batch_size=4, num_workers=0, rank=r, world_size=2, seed=1) for r in (0, 1)]
    labels = [torch.cat([y for _, y in epoch(r, 3)]).tolist() for r in ranks]
    assert not set(labels[0]) & set(labels[1]) and sorted(labels[0] + labels[1]) == list(range(40))


def test_augmentation_depends_on_the_sample_not_the_worker():
    one = DistributedDataset(DATA, batch_size=4, num_workers=0, collate_fn=pipeline(), seed=5)
    two = DistributedDataset(DATA, batch_size=4, num_workers=2, collate_fn=pipeline(), seed=5)
    a, b = epoch(one, 2), epoch(two, 2)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][0], epoch(one, 3)[0][0])  # a new epoch draws new augmentations


def test_mid_epoch_resume_continues_the_same_sequence_with_workers():
    full = epoch(DistributedDataset(DATA, batch_size=4, num_workers=2, collate_fn=pipeline(), seed=9), 1)
    state = DistributedDataset(DATA, batch_size=4, collate_fn=pipeline(), seed=9).state_dict()
    resumed = DistributedDataset(DATA, batch_size=4, num_workers=2, collate_fn=pipeline(), seed=9)
    resumed.load_state_dict({**state, "epoch": 1, "batches": 6})
    rest = epoch(resumed, 1)
    assert len(rest) == 4 and all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(full[6:], rest))


def test_registered_dataset_by_name():
    loader = DistributedDataset("digits", batch_size=64, num_workers=0)
    x, y = next(iter(loader))
    assert x.shape == (64, 1, 8, 8) and len(loader) == 23


def test_a_path_to_an_image_folder(tmp_path):
    import numpy as np
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(6):
            Image.fromarray(np.full((8, 8, 3), 20 * i, dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    pipeline = Pipeline([{"type": "RandomHorizontalFlip", "params": {}}])
    loader = DistributedDataset(str(tmp_path), batch_size=4, num_workers=2, collate_fn=pipeline)
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 64, 64) and len(loader) == 3
