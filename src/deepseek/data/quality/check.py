"""The documents' three-stage data cleaning, as a report (``deepseek data check CONFIG``).

1. Noise filtering: exact duplicates (and duplicates with conflicting labels), samples with NaN or
   infinite values, samples that cannot be read, and suspected label noise by confident learning
   (Northcutt et al. 2021): out-of-fold class probabilities from a cross-validated logistic
   regression; a sample is suspect when its given label's probability is below that class's own
   average confidence while another class's probability reaches that class's average.
2. Domain filtering: distance to the k-th nearest neighbour in a reference set (standardised
   features); samples farther than the reference's own ``domain_quantile`` distance are flagged.
3. Difficulty stratification: per-sample out-of-fold cross-entropy, cut into easy/medium/hard terciles.

Written here because no maintained library does the three together on torch datasets; the
confident-learning rule is a few lines (``cleanlab`` implements it with many more dependencies).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from torch.utils.data import Dataset


def read_samples(dataset: Dataset) -> tuple[list[np.ndarray | None], list[int | None], dict[int, str]]:
    """Flattened float inputs and integer labels of every sample; failures recorded by index."""
    xs: list[np.ndarray | None] = []
    ys: list[int | None] = []
    errors: dict[int, str] = {}
    for i in range(len(dataset)):  # type: ignore[arg-type]
        try:
            x, y = dataset[i][0], dataset[i][1]
            xs.append(np.asarray(x, dtype=np.float64).reshape(-1))
            ys.append(int(y))
        except Exception as exc:  # an unreadable file, a corrupt record: report it, keep going
            xs.append(None)
            ys.append(None)
            errors[i] = f"{type(exc).__name__}: {exc}"
    return xs, ys, errors


def duplicates(xs: list[np.ndarray | None], ys: list[int | None]) -> tuple[list[list[int]], list[list[int]]]:
    """Groups of indices with byte-identical inputs, and the subset of groups whose labels disagree."""
    groups: dict[str, list[int]] = {}
    for i, x in enumerate(xs):
        if x is not None:
            groups.setdefault(hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest(), []).append(i)
    dup = [g for g in groups.values() if len(g) > 1]
    return dup, [g for g in dup if len({ys[i] for i in g}) > 1]


def out_of_fold_probabilities(x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """``(N, classes)`` probabilities, each predicted by a model that did not see that sample."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=0.5))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(model, x, y, cv=cv, method="predict_proba")


def confident_learning_suspects(probs: np.ndarray, y: np.ndarray) -> list[int]:
    """Indices whose given label is off the confident joint's diagonal, most confident first."""
    classes = probs.shape[1]
    thresholds = np.array([probs[y == c, c].mean() if np.any(y == c) else 1.0 for c in range(classes)])
    above = probs >= thresholds[None, :]
    masked = np.where(above, probs, -1.0)
    best = masked.argmax(axis=1)
    confident_other = above.any(axis=1) & (best != y)
    given_low = probs[np.arange(len(y)), y] < thresholds[y]
    suspects = np.nonzero(confident_other & given_low)[0]
    margin = probs[suspects, best[suspects]] - probs[suspects, y[suspects]]
    return suspects[np.argsort(-margin)].tolist()


def out_of_domain(x: np.ndarray, reference: np.ndarray, k: int = 5, quantile: float = 0.99) -> tuple[list[int], float]:
    """Indices of ``x`` whose k-th-neighbour distance to ``reference`` exceeds the reference's own quantile."""
    from sklearn.neighbors import NearestNeighbors

    mean, std = reference.mean(0), reference.std(0) + 1e-8
    ref, xs = (reference - mean) / std, (x - mean) / std
    nn = NearestNeighbors(n_neighbors=k + 1).fit(ref)
    threshold = float(np.quantile(nn.kneighbors(ref)[0][:, k], quantile))  # column 0 is the point itself
    dist = nn.kneighbors(xs, n_neighbors=k)[0][:, k - 1]
    return np.nonzero(dist > threshold)[0].tolist(), threshold


def check_dataset(
    dataset: Dataset,
    reference: Dataset | None = None,
    *,
    folds: int = 5,
    seed: int = 0,
    domain_quantile: float = 0.99,
    max_listed: int = 50,
) -> dict[str, Any]:
    """The cleaning report of ``dataset`` (``(input, label)`` samples); ``reference`` for domain filtering."""
    xs, ys, errors = read_samples(dataset)
    dup_groups, conflicting = duplicates(xs, ys)
    invalid = [i for i, x in enumerate(xs) if x is not None and not np.all(np.isfinite(x))]
    usable = [i for i, x in enumerate(xs) if x is not None and i not in set(invalid)]
    x = np.stack([xs[i] for i in usable])
    y = np.array([ys[i] for i in usable])
    probs = out_of_fold_probabilities(x, y, folds, seed)
    suspects = [usable[i] for i in confident_learning_suspects(probs, y)]
    loss = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))
    cuts = np.quantile(loss, [1 / 3, 2 / 3])
    strata = {name: [usable[i] for i in np.nonzero(mask)[0]] for name, mask in
              (("easy", loss <= cuts[0]), ("medium", (loss > cuts[0]) & (loss <= cuts[1])), ("hard", loss > cuts[1]))}  # fmt: skip
    domain: dict[str, Any] = {"reference": None, "flagged": []}
    if reference is not None:
        ref_x = np.stack([r for r in read_samples(reference)[0] if r is not None and np.all(np.isfinite(r))])
        flagged, threshold = out_of_domain(x, ref_x, quantile=domain_quantile)
        domain = {"reference_size": len(ref_x), "threshold": threshold, "flagged": [usable[i] for i in flagged]}
    drop = set(errors) | set(invalid) | set(suspects) | set(domain["flagged"]) | {i for g in dup_groups for i in g[1:]}
    return {
        "samples": len(xs),
        "noise": {
            "unreadable": {str(i): e for i, e in list(errors.items())[:max_listed]} | {"count": len(errors)},
            "invalid_values": {"count": len(invalid), "indices": invalid[:max_listed]},
            "duplicates": {
                "groups": len(dup_groups),
                "extra_copies": sum(len(g) - 1 for g in dup_groups),
                "examples": dup_groups[:max_listed],
            },
            "conflicting_duplicates": {"groups": len(conflicting), "examples": conflicting[:max_listed]},
            "label_noise": {
                "method": "confident learning on out-of-fold logistic-regression probabilities",
                "count": len(suspects),
                "indices": suspects[:max_listed],
            },
        },
        "domain": {**domain, "count": len(domain["flagged"]), "flagged": domain["flagged"][:max_listed]},
        "difficulty": {
            "loss_cuts": [float(c) for c in cuts],
            **{
                k: {"count": len(v), "mean_loss": float(loss[[usable.index(i) for i in v]].mean()) if v else 0.0}
                for k, v in strata.items()
            },
        },
        "clean_indices": [i for i in range(len(xs)) if i not in drop],
        "removed": len(drop),
    }
