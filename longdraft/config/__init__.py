"""Typed run configuration: YAML file + ``section.key=value`` overrides, validated with clear errors."""

from longdraft.config.loading import config_from_dict, load_config, save_config
from longdraft.config.schema import Config, ConfigError

__all__ = ["Config", "ConfigError", "config_from_dict", "load_config", "save_config"]
