"""Architecture search (``deepseek nas``): a space of choices from YAML, constraints checked before training,
a searcher (reinforce, regularized evolution, random, TPE), proxy training or a user's evaluator, and a
resumable history with its Pareto front. See docs/search.md."""

from deepseek.search.nas.algorithms import ALGORITHMS, Searcher, make_searcher

__all__ = ["ALGORITHMS", "Searcher", "make_searcher"]
