"""Config parsing is bounded: alias bombs, huge files, deep nesting and duplicate keys end in one short
ConfigError line (exit 2 from the CLI), never in gigabytes of memory, a RecursionError or a silent choice."""

from __future__ import annotations

import pytest
import yaml

from deepseek.cli.main import main
from deepseek.config import ConfigError, load_config
from tests.conftest import REPO

QUICKSTART = REPO / "configs" / "quickstart.yaml"
MAX_LINE = 500  # what one error line may take, whatever the input


def bomb_value(levels: int) -> str:
    """A YAML flow value whose aliases expand to 9**levels strings ("billion laughs")."""
    text = "&l0 [" + ", ".join(['"lol"'] * 9) + "]"
    for i in range(1, levels):
        text = f"&l{i} [" + ", ".join([text] + [f"*l{i - 1}"] * 8) + "]"
    return text


def config_text_with(key_path: str, value_text: str) -> str:
    """The quickstart config as YAML text with ``value_text`` (raw YAML) placed at ``key_path``."""
    data = yaml.safe_load(QUICKSTART.read_text())
    node = data
    *parents, last = key_path.split(".")
    for part in parents:
        node = node[part]
    node[last] = "PLACEHOLDER"
    return yaml.safe_dump(data, sort_keys=False).replace("PLACEHOLDER", value_text)


def problems_of(path, overrides=()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    problems = info.value.problems
    assert problems and all("\n" not in p and len(p) < MAX_LINE for p in problems), [p[:200] for p in problems]
    return problems


BOMB_KEYS = ["model.width", "optim.lr", "train.max_epochs", "data.preprocess", "callbacks"]


@pytest.mark.parametrize("key", BOMB_KEYS)
def test_a_nine_level_alias_bomb_is_refused(tmp_path, key):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(config_text_with(key, bomb_value(9)))
    problems = problems_of(cfg)
    assert len(problems) == 1 and "alias" in problems[0] and str(cfg) in problems[0]


@pytest.mark.parametrize("key", BOMB_KEYS)
def test_a_smaller_alias_expansion_is_reported_without_printing_it_whole(tmp_path, key):
    cfg = tmp_path / "bomb5.yaml"
    cfg.write_text(config_text_with(key, bomb_value(5)))  # 59049 strings: allowed, but a wrong type
    problems = problems_of(cfg)
    assert any(key.split(".")[-1] in p for p in problems)


def test_an_alias_bomb_in_an_override_is_refused():
    problems = problems_of(QUICKSTART, [f"model.width={bomb_value(9)}"])
    assert len(problems) == 1 and "alias" in problems[0] and "model.width" in problems[0]


def test_a_recursive_alias_is_refused(tmp_path):
    cfg = tmp_path / "loop.yaml"
    cfg.write_text(config_text_with("model.width", "&loop [*loop]"))
    assert "alias" in problems_of(cfg)[0]


def test_a_config_over_1_mb_is_refused_before_parsing(tmp_path):
    cfg = tmp_path / "big.yaml"
    cfg.write_text(QUICKSTART.read_text() + "# padding\n" * 120_000)  # valid YAML, 1.2 MB
    problems = problems_of(cfg)
    assert len(problems) == 1 and "1 MB" in problems[0] and str(cfg) in problems[0]


def test_an_override_over_1_mb_is_refused():
    problems = problems_of(QUICKSTART, ["model.name=" + "x" * 1_100_000])
    assert len(problems) == 1 and "1 MB" in problems[0] and "model.name" in problems[0]


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_deep_nesting_is_a_config_error_not_a_recursion_error(tmp_path, depth):
    cfg = tmp_path / "deep.yaml"
    cfg.write_text(config_text_with("model.width", "[" * depth + "]" * depth))
    problems = problems_of(cfg)
    assert len(problems) == 1 and "nest" in problems[0] and "line" in problems[0]


def test_a_deeply_nested_document_is_a_config_error(tmp_path):
    cfg = tmp_path / "deep.yaml"
    cfg.write_text("[" * 100_000 + "]" * 100_000)
    assert "nest" in problems_of(cfg)[0]


def test_deep_nesting_in_an_override_is_a_config_error():
    problems = problems_of(QUICKSTART, ["model.width=" + "[" * 5_000 + "]" * 5_000])
    assert "nest" in problems[0] and "model.width" in problems[0]


def test_an_override_key_path_too_deep_is_a_config_error():
    problems = problems_of(QUICKSTART, ["model." + ".".join(["a"] * 5_000) + "=1"])
    assert "nest" in problems[0]


def test_a_duplicate_key_names_both_lines(tmp_path):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("model: {name: simple_cnn}\ndata: {name: digits}\noptim:\n  name: adamw\n  lr: 0.1\n  lr: 0.2\n")
    problems = problems_of(cfg)
    assert len(problems) == 1
    assert "duplicate key 'lr'" in problems[0] and "line 6" in problems[0] and "line 5" in problems[0]


def test_a_duplicate_section_names_both_lines(tmp_path):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("model: {name: simple_cnn}\ndata: {name: digits}\nmodel: {name: cnn}\n")
    problem = problems_of(cfg)[0]
    assert "duplicate key 'model'" in problem and "line 3" in problem and "line 1" in problem


def test_merge_keys_are_not_duplicates(tmp_path):
    cfg = tmp_path / "merge.yaml"
    cfg.write_text("model: {name: simple_cnn}\ndata: {name: digits}\noptim:\n  <<: {name: adamw, lr: 0.1}\n  lr: 0.2\n")
    assert load_config(cfg).optim.lr == 0.2


def test_the_cli_exits_2_with_one_line(tmp_path, capsys):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(config_text_with("optim.lr", bomb_value(9)))
    assert main(["config", "validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and len(err) < MAX_LINE
