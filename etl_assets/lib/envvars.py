"""`${VAR}` / `${VAR:-default}` templates in configuration values.

Values stay templates until a run needs them, so the Dagster UI, logs and metadata only ever show
`${SOURCE_DATABASE_URL}`, never what the variable holds (Dagster `EnvVar` semantics).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

_TEMPLATE = re.compile(r"\$\{(?P<body>[^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# scheme://user:password@ ; the password runs to the last `@` before the path.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^/\s]*)@")


class TemplateError(ValueError):
    """A `${...}` template is malformed or names a variable that is not set.

    Attributes:
        variable: the unset variable's name (None for a malformed template).
    """

    def __init__(self, message: str, variable: str | None = None) -> None:
        super().__init__(message)
        self.variable = variable


def _split(body: str) -> tuple[str, str | None]:
    name, sep, default = body.partition(":-")
    if not _NAME.fullmatch(name):
        raise TemplateError(
            f"'${{{body}}}' is not a valid variable reference; use ${{NAME}} or ${{NAME:-default}} "
            "with NAME made of letters, digits and underscores"
        )
    if "${" in default:
        raise TemplateError(
            f"'${{{body}}}' nests a reference in its default, which is not supported; "
            "use a literal default such as ${NAME:-text}"
        )
    return name, (default if sep else None)


def check_template(value: str) -> None:
    """Raise `TemplateError` if `value` holds a malformed `${...}` reference."""
    for match in _TEMPLATE.finditer(value):
        _split(match.group("body"))
    if "${" in _TEMPLATE.sub("", value):
        raise TemplateError(f"'{redact(value)}' has an unclosed '${{'; close it with '}}'")


def variables(value: str) -> list[str]:
    """Names of the variables `value` refers to, in order."""
    return [_split(m.group("body"))[0] for m in _TEMPLATE.finditer(value)]


def is_template(value: str) -> bool:
    """True when `value` contains a `${...}` reference."""
    return bool(_TEMPLATE.search(value))


def resolve(value: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace every `${VAR}` / `${VAR:-default}` in `value` from `environ` (default: os.environ).

    Raises:
        TemplateError: a variable without default is unset, or a template is malformed; the message
            names the variable only, never any value.
    """
    check_template(value)
    env = os.environ if environ is None else environ

    def substitute(match: re.Match[str]) -> str:
        name, default = _split(match.group("body"))
        found = env.get(name)
        if found is not None and (found != "" or default is None):
            return found
        if default is not None:
            return default
        raise TemplateError(f"environment variable {name} is not set", variable=name)

    return _TEMPLATE.sub(substitute, value)


def static_prefix(value: str) -> str:
    """The literal text before the first `${`, used to validate URL schemes before run time."""
    index = value.find("${")
    return value if index < 0 else value[:index]


def redact(value: str) -> str:
    """`value` with a literal password in a URL's user-info replaced by `***`, for messages.

    A password that is a `${VAR}` reference is kept: the template holds no secret.
    """

    def hide(match: re.Match[str]) -> str:
        password = match.group("password")
        if not password or password.startswith("${"):
            return match.group(0)
        return f"{match.group('head')}***@"

    return _URL_PASSWORD.sub(hide, value)
