"""Fuzzing ``load_config`` with random YAML documents and overrides: it returns a Config or raises
ConfigError (never another exception), and each problem is one line of bounded length."""

from __future__ import annotations

import math

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepseek.config import Config, ConfigError, load_config
from deepseek.config.schema import CheckpointSection, LoggingSection, TrainSection
from tests.conftest import REPO

QUICKSTART = REPO / "configs" / "quickstart.yaml"
MAX_LINE = 500
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Free text has no '.' or ':': a component name with them is an import path, and importing modules that
# hypothesis made up is no part of this test. Import paths come from NAMES instead.
TEXT = st.text(alphabet="abcXYZ019 -_/[]{},#&*!|>'\"%@`\n\t\\", max_size=24)
NAMES = st.sampled_from(
    ["simple_cnn", "cnn", "digits", "adamw", "sgd", "warmup_cosine", "early_stopping", "accuracy", "cross_entropy",
     "../../etc/passwd", "torch.optim.SGD", "torch.optim.Adam", "no_such.module:Thing", "", "x" * 300]
)  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.sampled_from(["inf", ".inf", "-.inf", "nan", ".nan", "1e400", "cuda", "cpu", "auto", "stop", "skip", "[2,3]"]),
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12
)
SECTION_KEYS = {
    "model": ["name", "width", "num_classes", "dropout", "in_channels"],
    "data": ["name", "batch_size", "val_fraction", "preprocess", "transforms", "num_workers", "shuffle"],
    "optim": ["name", "lr", "betas", "eps", "weight_decay", "momentum"],
    "scheduler": ["name", "warmup_steps"],
    "train": sorted(TrainSection.model_fields),
    "checkpoint": sorted(CheckpointSection.model_fields),
    "logging": sorted(LoggingSection.model_fields),
}
KEYS = st.one_of(
    st.sampled_from([f"{s}.{k}" for s, keys in SECTION_KEYS.items() for k in keys]),
    st.sampled_from([*SECTION_KEYS, "callbacks", "callbacks.0.name", "train.metrics.0", "model.width.x"]),
    st.lists(st.sampled_from(["model", "optim", "lr", "0", "x", "name"]), min_size=1, max_size=5).map(".".join),
)


def _value_for(key: str) -> st.SearchStrategy:
    return NAMES if key.endswith("name") else VALUES


OVERRIDES = st.lists(KEYS.flatmap(lambda k: _value_for(k).map(lambda v: (k, v))), max_size=5)


def _yaml_text(value: object) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def assert_loads_or_refuses(path, overrides: list[str]) -> None:
    try:
        cfg = load_config(path, overrides)
    except ConfigError as exc:
        assert exc.problems and str(exc) == "\n".join(exc.problems)
        for problem in exc.problems:
            assert "\n" not in problem and 0 < len(problem) < MAX_LINE, problem[:MAX_LINE]
        return
    assert isinstance(cfg, Config)
    assert all(math.isfinite(v) for v in (cfg.optim.kwargs.get("lr", 1.0), cfg.optim.kwargs.get("eps", 1.0)))


@FUZZ
@given(OVERRIDES)
def test_random_overrides(pairs):
    assert_loads_or_refuses(QUICKSTART, [f"{k}={_yaml_text(v)}" for k, v in pairs])


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from([*SECTION_KEYS, "callbacks", "extra"]),
        st.one_of(
            VALUES,
            st.sampled_from(list(SECTION_KEYS.values())).flatmap(
                lambda keys: st.dictionaries(st.sampled_from(keys), VALUES | NAMES, max_size=5)
            ),
        ),
        max_size=8,
    )
)
def test_random_documents(tmp_path_factory, document):
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    assert_loads_or_refuses(path, [])


@FUZZ
@given(st.lists(st.sampled_from(["model:", "  name:", "  width:", "data:", "optim:", "  lr:", " &a", " *a", " [", "]",
                                 " {", "}", ",", " .inf", " 1e400", " -", "\n", "\t", " ?", " <<:", " !!str",
                                 " !!python/object:os.system", " '", ' "', " |", " >", "#"]), max_size=40))  # fmt: skip
def test_random_text(tmp_path_factory, pieces):
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text("".join(pieces))
    assert_loads_or_refuses(path, [])
