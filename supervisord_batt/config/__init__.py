"""Configuration: frozen records (`records`), the YAML loader (`loader`), value parsers.

`load_config` validates a whole file at once into a `Config`, or raises `ConfigError`
naming every bad key with its line. The daemon and `check-config` use the same loader.
"""

from __future__ import annotations

from supervisord_batt.config.loader import load_config, load_config_text
from supervisord_batt.config.records import BudgetConfig, Config, DaemonConfig, ProgramConfig
from supervisord_batt.config.yamlcheck import ConfigError

__all__ = [
    "BudgetConfig",
    "Config",
    "ConfigError",
    "DaemonConfig",
    "ProgramConfig",
    "load_config",
    "load_config_text",
]
