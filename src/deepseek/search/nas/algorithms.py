"""Search algorithms over categorical choices: ``make_searcher(algorithm, choices, seed)`` -> a :class:`Searcher`.

A candidate is a dict ``choice name -> chosen value`` (one value of each ``choices[name]`` list); higher scores
are better. ``tell(candidate, None)`` says a constraint rejected the candidate before training: every algorithm
counts it (``searcher.rejected``) and none crashes:

* ``random``: uniform over each choice (numpy ``Generator`` seeded); scores are not used.
* ``evolution``: regularized (aging) evolution, Real et al. 2019 (AAAI, "Regularized Evolution for Image
  Classifier Architecture Search"): the first ``population`` evaluated candidates are random; then each new
  candidate is the best of ``tournament`` members drawn from the population with one choice mutated to another
  value; when the population is full, the oldest member dies. A rejected candidate never joins the population.
  Written here because no maintained library implements it over a plain categorical space (NNI's is unmaintained).
* ``reinforce``: a controller of one softmax (logits) per choice, trained with REINFORCE (Williams 1992) and a
  moving-average baseline (Zoph & Le 2017): loss ``-(R - b) * sum log p(choice)`` after each score, Adam on the
  logits (torch), ``b <- decay * b + (1 - decay) * R``. Written here on torch.optim: no maintained library
  has a policy-gradient NAS controller (NNI's is unmaintained since 2023, Optuna has none). A rejected
  candidate gets the reward ``rejected_reward`` (default: the lowest score seen so far), so the policy moves
  away from it; before any score there is no baseline to compare with and it is only counted.
* ``tpe``: Optuna's ``TPESampler`` through ``study.ask(fixed_distributions)`` / ``study.tell`` over
  ``CategoricalDistribution``\\ s. A rejected candidate is told as a COMPLETE trial with the constraint
  ``rejected = 1`` (``Trial.set_constraint``: > 0 is infeasible), so TPE ranks it below every feasible trial
  (its value is not used).

Everything is seeded: the same ``seed`` and the same sequence of ``ask``/``tell`` give the same candidates, so
a search restarted from its history replays ``ask(); tell(recorded candidate, recorded score)`` per record and
continues exactly as the uninterrupted search would have.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

ALGORITHMS = ("reinforce", "evolution", "random", "tpe")


@runtime_checkable
class Searcher(Protocol):
    """Proposes candidates and learns from their scores (higher is better; None: rejected by a constraint).
    The searchers :func:`make_searcher` builds also count the rejected candidates told (``searcher.rejected``)."""

    def ask(self) -> dict[str, Any]: ...

    def tell(self, candidate: dict[str, Any], score: float | None) -> None: ...


def _check_choices(choices: dict[str, list[Any]]) -> dict[str, list[Any]]:
    if not isinstance(choices, dict) or not choices:
        raise ValueError(f"choices: {choices!r}; allowed: a non-empty mapping of choice name -> list of values")
    for name, values in choices.items():
        if not isinstance(values, (list, tuple)) or len(values) == 0:
            raise ValueError(f"choices.{name}: {values!r}; allowed: a non-empty list of values")
    return {name: list(values) for name, values in choices.items()}


def _index(choices: dict[str, list[Any]], candidate: dict[str, Any]) -> dict[str, int]:
    """Each chosen value's position in its list; a candidate that is not in the space is a ValueError."""
    out = {}
    for name, values in choices.items():
        if name not in candidate or candidate[name] not in values:
            raise ValueError(f"candidate.{name}: {candidate.get(name)!r}; allowed: one of {values}")
        out[name] = values.index(candidate[name])
    return out


class RandomSearcher:
    """Uniform random candidates (seeded)."""

    def __init__(self, choices: dict[str, list[Any]], seed: int) -> None:
        self.choices = choices
        self.rng = np.random.default_rng(seed)
        self.rejected = 0

    def ask(self) -> dict[str, Any]:
        return {name: values[int(self.rng.integers(len(values)))] for name, values in self.choices.items()}

    def tell(self, candidate: dict[str, Any], score: float | None) -> None:
        _index(self.choices, candidate)
        self.rejected += score is None


class EvolutionSearcher:
    """Regularized (aging) evolution: tournament selection, one-choice mutation, the oldest dies."""

    def __init__(self, choices: dict[str, list[Any]], seed: int, population: int = 10, tournament: int = 3) -> None:
        if population < 2 or not 1 <= tournament <= population:
            raise ValueError(f"evolution: population={population}, tournament={tournament}; allowed: "
                             f"population >= 2 and 1 <= tournament <= population")  # fmt: skip
        self.choices, self.size, self.tournament = choices, population, tournament
        self.rng = np.random.default_rng(seed)
        self.population: deque[tuple[dict[str, Any], float]] = deque()  # oldest on the left
        self.rejected = 0

    def ask(self) -> dict[str, Any]:
        if len(self.population) < self.size:  # the initial population is random
            return {name: values[int(self.rng.integers(len(values)))] for name, values in self.choices.items()}
        drawn = self.rng.choice(len(self.population), size=self.tournament, replace=False)
        parent = max((self.population[int(i)] for i in drawn), key=lambda member: member[1])[0]
        return self._mutate(parent)

    def _mutate(self, parent: dict[str, Any]) -> dict[str, Any]:
        mutable = [name for name, values in self.choices.items() if len(values) > 1]
        child = dict(parent)
        if not mutable:
            return child
        name = mutable[int(self.rng.integers(len(mutable)))]
        others = [v for v in self.choices[name] if v != parent[name]]
        child[name] = others[int(self.rng.integers(len(others)))]
        return child

    def tell(self, candidate: dict[str, Any], score: float | None) -> None:
        _index(self.choices, candidate)
        if score is None:
            self.rejected += 1
            return
        self.population.append((dict(candidate), float(score)))
        if len(self.population) > self.size:
            self.population.popleft()  # aging: the oldest dies, not the worst


class ReinforceSearcher:
    """A softmax policy per choice trained by REINFORCE with a moving-average baseline."""

    def __init__(self, choices: dict[str, list[Any]], seed: int, lr: float = 0.1, baseline_decay: float = 0.9,
                 entropy_weight: float = 0.0, rejected_reward: float | None = None) -> None:  # fmt: skip
        if not 0.0 <= baseline_decay < 1.0:
            raise ValueError(f"reinforce: baseline_decay={baseline_decay}; allowed: 0 <= baseline_decay < 1")
        if lr <= 0:
            raise ValueError(f"reinforce: lr={lr}; allowed: a positive learning rate")
        self.choices, self.decay, self.entropy_weight = choices, baseline_decay, entropy_weight
        self.rejected_reward = rejected_reward
        self.generator = torch.Generator().manual_seed(seed)
        # logits[name]: (len(choices[name]),), zero = uniform policy at the start
        self.logits = {name: torch.zeros(len(v), requires_grad=True) for name, v in choices.items()}
        self.optimizer = torch.optim.Adam(list(self.logits.values()), lr=lr)
        self.baseline: float | None = None
        self.lowest: float | None = None
        self.rejected = 0

    def probabilities(self) -> dict[str, list[float]]:
        """The policy: for each choice, the probability of each value."""
        return {name: torch.softmax(x.detach(), 0).tolist() for name, x in self.logits.items()}

    def ask(self) -> dict[str, Any]:
        out = {}
        for name, x in self.logits.items():
            i = int(torch.multinomial(torch.softmax(x.detach(), 0), 1, generator=self.generator))
            out[name] = self.choices[name][i]
        return out

    def tell(self, candidate: dict[str, Any], score: float | None) -> None:
        picked = _index(self.choices, candidate)
        if score is None:
            self.rejected += 1
            reward = self.rejected_reward if self.rejected_reward is not None else self.lowest
            if reward is None or self.baseline is None:
                return  # nothing scored yet: no baseline to say how bad this is
        else:
            reward = float(score)
            self.lowest = reward if self.lowest is None else min(self.lowest, reward)
        if not math.isfinite(reward):
            raise ValueError(f"reinforce: score {score!r}; allowed: a finite number or None (rejected)")
        if self.baseline is None:
            self.baseline = reward  # the first reward: advantage 0, nothing to learn from it alone
            return
        advantage = reward - self.baseline
        log_prob = sum(torch.log_softmax(self.logits[n], 0)[i] for n, i in picked.items())
        entropy = sum(-(torch.softmax(x, 0) * torch.log_softmax(x, 0)).sum() for x in self.logits.values())
        loss = -advantage * log_prob - self.entropy_weight * entropy
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.baseline = self.decay * self.baseline + (1 - self.decay) * reward


class TPESearcher:
    """Optuna's TPE over categorical distributions, driven with ask/tell; rejected trials are infeasible."""

    def __init__(self, choices: dict[str, list[Any]], seed: int, n_startup_trials: int = 10,
                 multivariate: bool = True) -> None:  # fmt: skip
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.choices = choices
        # Optuna stores categorical values as None/bool/int/float/str: other values go by their index
        self.plain = {
            n: all(isinstance(v, (type(None), bool, int, float, str)) for v in vs) for n, vs in choices.items()
        }
        self.distributions = {
            n: optuna.distributions.CategoricalDistribution(vs if self.plain[n] else list(range(len(vs))))
            for n, vs in choices.items()
        }
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials, multivariate=multivariate)
        self.study = optuna.create_study(direction="maximize", sampler=sampler)
        self.pending: list[tuple[dict[str, Any], Any]] = []
        self.rejected = 0

    def ask(self) -> dict[str, Any]:
        trial = self.study.ask(self.distributions)
        candidate = {n: trial.params[n] if self.plain[n] else self.choices[n][trial.params[n]] for n in self.choices}
        self.pending.append((candidate, trial))
        return dict(candidate)

    def tell(self, candidate: dict[str, Any], score: float | None) -> None:
        picked = _index(self.choices, candidate)
        self.rejected += score is None
        value = 0.0 if score is None else float(score)  # an infeasible trial's value is never compared
        trial = next((t for c, t in self.pending if c == candidate), None)
        if trial is None:  # told without asking (a candidate from elsewhere): added as a finished trial
            params = {n: candidate[n] if self.plain[n] else picked[n] for n in self.choices}
            frozen = self.optuna.trial.create_trial(params=params, distributions=self.distributions, value=value,
                                                    constraints={"rejected": float(score is None)})  # fmt: skip
            self.study.add_trial(frozen)
            return
        self.pending = [(c, t) for c, t in self.pending if t is not trial]
        trial.set_constraint("rejected", float(score is None))  # > 0: infeasible, ranked below every feasible one
        self.study.tell(trial, value)


_SEARCHERS = {"random": RandomSearcher, "evolution": EvolutionSearcher, "reinforce": ReinforceSearcher,
              "tpe": TPESearcher}  # fmt: skip


def make_searcher(algorithm: str, choices: dict[str, list[Any]], seed: int, **options: Any) -> Searcher:
    """A seeded searcher over ``choices`` (choice name -> list of values). ``algorithm``: reinforce | evolution |
    random | tpe. ``options``: evolution ``population`` (10), ``tournament`` (3); reinforce ``lr`` (0.1),
    ``baseline_decay`` (0.9), ``entropy_weight`` (0), ``rejected_reward`` (lowest score so far); tpe
    ``n_startup_trials`` (10), ``multivariate`` (True)."""
    key = str(algorithm).lower()
    if key not in _SEARCHERS:
        raise ValueError(f"algorithm: {algorithm!r}; allowed: {', '.join(ALGORITHMS)}")
    cls = _SEARCHERS[key]
    import inspect

    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "choices", "seed")]
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise ValueError(f"{key} option {unknown[0]!r}: unknown; allowed: {', '.join(allowed) or '(none)'}")
    return cls(_check_choices(choices), int(seed), **options)
