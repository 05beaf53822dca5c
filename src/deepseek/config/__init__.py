"""Typed YAML run configs: ``load_config('cfg.yaml', ['optim.lr=1e-3'])`` -> :class:`Config`."""

from deepseek.config.load import ConfigError, apply_overrides, load_config, parse_value, read_yaml
from deepseek.config.schema import Component, Config

__all__ = ["Component", "Config", "ConfigError", "apply_overrides", "load_config", "parse_value", "read_yaml"]
