"""Each searcher finds a known optimum of a small space with a synthetic score, survives rejections, is seeded."""

from __future__ import annotations

import pytest

from deepseek.search.nas.algorithms import EvolutionSearcher, ReinforceSearcher, make_searcher

CHOICES = {
    "op": ["conv", "attn", "mlp", "skip"],
    "width": [16, 32, 64],
    "act": ["relu", "gelu", "silu", "tanh"],
    "depth": [1, 2, 3],
}  # fmt: skip  (4 * 3 * 4 * 3 = 144 candidates)
OPTIMUM = {"op": "attn", "width": 64, "act": "gelu", "depth": 2}


def score(c: dict) -> float | None:
    """Higher the more choices match the optimum (plus a gradient on width); 'skip' at width 16 is rejected."""
    if c["op"] == "skip" and c["width"] == 16:
        return None
    return sum(c[k] == v for k, v in OPTIMUM.items()) + 0.1 * CHOICES["width"].index(c["width"])


def search(algorithm: str, seed: int, budget: int) -> tuple[int | None, int, list[dict]]:
    """(sample at which the optimum was first proposed, rejections, every candidate)."""
    searcher = make_searcher(algorithm, CHOICES, seed)
    found, seen = None, []
    for i in range(budget):
        c = searcher.ask()
        assert set(c) == set(CHOICES) and all(c[k] in CHOICES[k] for k in c)
        seen.append(c)
        if c == OPTIMUM and found is None:
            found = i
        searcher.tell(c, score(c))
    return found, searcher.rejected, seen


@pytest.mark.parametrize("algorithm,budget", [("reinforce", 80), ("evolution", 80), ("tpe", 40), ("random", 144)])
def test_finds_the_optimum_within_budget_and_counts_rejections(algorithm, budget):
    """Seeds 0, 1, 2: the optimum proposed within the budget for at least two (random: 144 = the space's size)."""
    found = []
    for seed in range(3):
        at, rejected, seen = search(algorithm, seed=seed, budget=budget)
        found.append(at)
        assert rejected == sum(score(c) is None for c in seen)
    assert sum(at is not None for at in found) >= 2, f"{algorithm}: optimum first proposed at {found}"


@pytest.mark.parametrize("algorithm", ["reinforce", "evolution", "tpe", "random"])
def test_same_seed_same_candidates_other_seed_others(algorithm):
    assert search(algorithm, 1, 25)[2] == search(algorithm, 1, 25)[2]
    assert search(algorithm, 1, 25)[2] != search(algorithm, 2, 25)[2]


def test_evolution_population_ages_and_ignores_rejected():
    ev = EvolutionSearcher({"a": [0, 1, 2]}, seed=0, population=3, tournament=2)
    for value, s in [(0, 5.0), (1, None), (1, 1.0), (2, 2.0), (0, 0.5)]:
        ev.tell({"a": value}, s)
    # the oldest (the best, 5.0) died when the fourth scored member came in; the rejected never joined
    assert [(m["a"], s) for m, s in ev.population] == [(1, 1.0), (2, 2.0), (0, 0.5)] and ev.rejected == 1
    child = ev.ask()  # the best of 2 drawn, one choice changed: never equal to its parent
    assert child["a"] in (0, 1, 2)


def test_reinforce_moves_probability_to_the_rewarded_value_and_away_from_rejected():
    rl = ReinforceSearcher({"a": ["x", "y", "z"]}, seed=0, lr=0.2)
    for _ in range(30):
        for value, s in (("x", 1.0), ("y", 0.0), ("z", None)):
            rl.tell({"a": value}, s)
    p = rl.probabilities()["a"]
    assert p[0] > 0.9 and p[2] < p[0] and rl.rejected == 30


def test_bad_arguments():
    with pytest.raises(ValueError, match="algorithm: 'grid'; allowed: reinforce, evolution, random, tpe"):
        make_searcher("grid", CHOICES, 0)
    with pytest.raises(ValueError, match="choices.op: \\[\\]; allowed: a non-empty list"):
        make_searcher("random", {"op": []}, 0)
    with pytest.raises(ValueError, match="tpe option 'population': unknown"):
        make_searcher("tpe", CHOICES, 0, population=3)
    with pytest.raises(ValueError, match="candidate.op: 'pool'; allowed: one of"):
        make_searcher("random", CHOICES, 0).tell({**OPTIMUM, "op": "pool"}, 1.0)
