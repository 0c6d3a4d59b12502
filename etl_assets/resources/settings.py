"""Resolve `${VAR}` templates from config when a run needs them, with errors that name file and key."""

from __future__ import annotations

from etl_assets.config import ConfigError
from etl_assets.lib import envvars


def resolve_setting(config_file: str, key: str, value: str) -> str:
    """Resolve `value` from the environment.

    Raises:
        ConfigError: naming the file, the key and the variable to set (never a value).
    """
    try:
        return envvars.resolve(value)
    except envvars.TemplateError as exc:
        names = ", ".join(envvars.variables(value)) or "the variable"
        raise ConfigError(
            f"{config_file or 'config'}: {key}: {exc}; export {names} before starting the run, "
            f"or give a default with ${{NAME:-default}}"
        ) from None
