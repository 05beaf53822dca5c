"""``from deepseek.data.augment import Compose`` (document 004): :class:`Pipeline` under that name, with
every registered transform importable from here too."""

from deepseek.data.transforms import *  # noqa: F403
from deepseek.data.transforms import Pipeline

Compose = Pipeline
