"""Alert messages for failed runs, failed checks and recovered checks: what people are told, as data.

An `Alert` is a subject line and a JSON-ready body. The builders here decide the wording; the
`AlertPublisher` resource sends it (SNS, or the log), and the sensors decide when. Nothing here
talks to Dagster or AWS, so every message can be tested as plain data.

Subjects follow SNS's rules, which a rejected publish would otherwise only reveal in production:
ASCII only, no line breaks or control characters, starting with a letter, digit or punctuation and
shorter than 100 characters (longer ones are cut with `...`). Bodies carry the table, the check or
failing step, the diff or error, the partition, the run id and links into the Dagster UI; error text
and every string that came from a run pass through `redact`, so a database URL in an exception
never carries its password into an alert.
"""

from __future__ import annotations

import contextlib
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from etl_assets.lib import envvars

AlertKind = Literal["check_failed", "check_recovered", "run_failed"]

SUBJECT_PREFIX = "[etl-assets]"
SUBJECT_MAX = 99  # SNS: "must be less than 100 characters"
# SNS messages may be 256 KiB including attributes; leave room for the subject and attributes.
BODY_MAX_BYTES = 200_000
ERROR_MAX_CHARS = 4_000
SCHEMA_DRIFT_CHECK = "schema_drift"  # the same name as etl_assets.assets.naming (lib must not import it)

_ELLIPSIS = "..."
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_SPACES = re.compile(r"\s+")
# `password=...`, `token: ...` and the like in connection strings and messages (not URLs: see envvars).
_SECRET_PAIR = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key(?:[_-]?id)?|"
    r"secret[_-]?access[_-]?key|session[_-]?token)\b\s*[=:]\s*)"
    r"(?P<quote>['\"]?)(?P<value>[^\s'\"&;,)\]}]+)(?P=quote)",
    re.IGNORECASE,
)
_AWS_ACCESS_KEY = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
# `scheme://user:password@host`, the password running to the last `@` of the URL: an unencoded `/`
# or `@` in a password must not leave half of it behind (hiding too much beats showing a secret).
# The lookbehind starts a match only where a scheme can start, which keeps long text linear.
_URL_USERINFO = re.compile(
    r"(?P<head>(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s'\"<>]*:)[^\s'\"<>]*@"
)


@dataclass(frozen=True)
class Alert:
    """One message: `subject` (SNS-safe, < 100 characters) and `body` (JSON-ready)."""

    kind: AlertKind
    subject: str
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def message(self) -> str:
        """The body as the JSON text that is published."""
        return json.dumps(self.body, indent=2, sort_keys=False, default=str)

    @property
    def table(self) -> str:
        """The table the alert is about (the first one for a run), or ''."""
        table = self.body.get("table")
        if isinstance(table, str):
            return table
        tables = self.body.get("tables") or []
        return str(tables[0]) if tables else ""


def redact(text: str) -> str:
    """`text` without credentials: URL passwords, `password=...` pairs and AWS access key ids.

    `mysql+pymysql://etl:s3cret@db/clinic` becomes `mysql+pymysql://etl:***@db/clinic`; a password that
    is a `${VAR}` reference is left alone, because the template holds no secret.
    """
    if not text:
        return text
    cleaned = _URL_USERINFO.sub(_hide_userinfo, text) if "://" in text else text
    cleaned = _SECRET_PAIR.sub(_hide_pair, cleaned)
    return _AWS_ACCESS_KEY.sub("***", cleaned)


def _hide_userinfo(match: re.Match[str]) -> str:
    # A `${VAR}` password is a template, not a secret; envvars.redact keeps it and finds the `@`.
    if match.group(0)[len(match.group("head")) :].startswith("${"):
        return envvars.redact(match.group(0))
    return f"{match.group('head')}***@"


def _hide_pair(match: re.Match[str]) -> str:
    value = match.group("value")
    # MySQL's "(using password: YES)" says whether one was sent, not what it was.
    if value.startswith(("${", "***")) or value.upper() in ("YES", "NO"):
        return match.group(0)
    return f"{match.group('key')}***"


def safe_subject(text: str) -> str:
    """`text` as SNS accepts it: ASCII, one line, under 100 characters (cut with `...`)."""
    # Accents decompose to their base letter; anything else outside ASCII shows as `?`.
    decomposed = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    ascii_text = decomposed.encode("ascii", "replace").decode("ascii")
    one_line = _SPACES.sub(" ", _CONTROL.sub(" ", ascii_text)).strip()
    if not one_line or not (one_line[0].isalnum() or _is_punctuation(one_line[0])):
        one_line = f"{SUBJECT_PREFIX} {one_line}".strip()
    if len(one_line) > SUBJECT_MAX:
        one_line = one_line[: SUBJECT_MAX - len(_ELLIPSIS)].rstrip() + _ELLIPSIS
    return one_line


def _is_punctuation(char: str) -> bool:
    return unicodedata.category(char).startswith("P") or char in "$+<=>^`|~"


def run_url(ui_url: str, run_id: str) -> str:
    """`<ui_url>/runs/<run_id>`, or '' without a run."""
    base = _base(ui_url)
    return f"{base}/runs/{quote(run_id, safe='')}" if base and run_id else ""


def asset_url(ui_url: str, asset_key: str) -> str:
    """`<ui_url>/assets/<key path>` for a key written `source/visits`."""
    base = _base(ui_url)
    path = "/".join(quote(part, safe="") for part in asset_key.split("/") if part)
    return f"{base}/assets/{path}" if base and path else ""


def _base(ui_url: str) -> str:
    return redact(ui_url.strip()).rstrip("/")


def qualified_table(source_name: str, table: str) -> str:
    """`clinic.visits`, or just the table without a source name."""
    return f"{source_name}.{table}" if source_name and table else table or source_name


def check_failed_alert(
    *,
    source_name: str,
    table: str,
    asset_key: str,
    check_name: str,
    description: str | None,
    metadata: Mapping[str, Any],
    run_id: str,
    partition: str | None,
    ui_url: str,
    severity: str = "ERROR",
    evaluated_at: str | None = None,
) -> Alert:
    """A check that was passing (or never seen) now fails.

    Args:
        source_name: the source database's name (asset group), e.g. `clinic`.
        table: the table's name, e.g. `visits`.
        asset_key: the checked asset, written `source/visits`.
        check_name: e.g. `schema_drift`.
        description: the evaluation's description, if any.
        metadata: the evaluation's metadata as plain values; for `schema_drift`: `diff` (a
            `SchemaDiff.to_dict()`), `summary`, `changes` (int) and `diff_markdown`.
        run_id: the run that evaluated the check ('' for one reported outside a run).
        partition: the evaluated partition, if any.
        ui_url: the Dagster UI's base URL.
        severity: `ERROR` or `WARN`.
        evaluated_at: when the check ran (ISO 8601), if known.
    """
    where = qualified_table(source_name, table) or asset_key
    if check_name == SCHEMA_DRIFT_CHECK:
        changes = _int(metadata.get("changes"))
        counted = f" ({changes} column{'s' if changes != 1 else ''})" if changes else ""
        subject = f"{SUBJECT_PREFIX} schema drift: {where}{counted}"
    else:
        subject = f"{SUBJECT_PREFIX} check failed: {check_name} on {asset_key}"
    body = _check_body(
        kind="check_failed",
        source_name=source_name,
        table=table,
        asset_key=asset_key,
        check_name=check_name,
        description=description,
        metadata=metadata,
        run_id=run_id,
        partition=partition,
        ui_url=ui_url,
        severity=severity,
        evaluated_at=evaluated_at,
    )
    return Alert("check_failed", safe_subject(subject), _fit(body))


def check_recovered_alert(
    *,
    source_name: str,
    table: str,
    asset_key: str,
    check_name: str,
    description: str | None,
    metadata: Mapping[str, Any],
    run_id: str,
    partition: str | None,
    ui_url: str,
    severity: str = "ERROR",
    evaluated_at: str | None = None,
) -> Alert:
    """A check that was failing passes again (same arguments as `check_failed_alert`)."""
    where = qualified_table(source_name, table) or asset_key
    if check_name == SCHEMA_DRIFT_CHECK:
        subject = f"{SUBJECT_PREFIX} schema drift resolved: {where}"
    else:
        subject = f"{SUBJECT_PREFIX} check recovered: {check_name} on {asset_key}"
    body = _check_body(
        kind="check_recovered",
        source_name=source_name,
        table=table,
        asset_key=asset_key,
        check_name=check_name,
        description=description,
        metadata=metadata,
        run_id=run_id,
        partition=partition,
        ui_url=ui_url,
        severity=severity,
        evaluated_at=evaluated_at,
    )
    return Alert("check_recovered", safe_subject(subject), _fit(body))


def run_failed_alert(
    *,
    job_name: str,
    run_id: str,
    step_key: str | None,
    error: str,
    tables: Sequence[str],
    partition: str | None,
    ui_url: str,
    source_name: str = "",
    error_type: str = "",
    failed_steps: Sequence[str] = (),
) -> Alert:
    """A run failed.

    Args:
        job_name: the run's job (`__ASSET_JOB` for ad hoc asset runs).
        run_id: the failed run.
        step_key: the first step that failed, or None when the run failed outside a step.
        error: the error message (redacted and shortened here).
        tables: the tables whose assets the failed steps (or the run) materialize.
        partition: the run's partition or partition range, if any.
        ui_url: the Dagster UI's base URL.
        source_name: the source database's name, to write tables as `clinic.visits`.
        error_type: the exception's class name, if known.
        failed_steps: every step that failed (defaults to `step_key`).
    """
    names = [qualified_table(source_name, table) for table in tables if table]
    what = step_key or job_name
    details = [", ".join(names)] if names else []
    if partition:
        details.append(partition)
    subject = f"{SUBJECT_PREFIX} run failed: {what}" + (f" ({'; '.join(details)})" if details else "")
    steps = list(failed_steps) or ([step_key] if step_key else [])
    body: dict[str, Any] = {
        "kind": "run_failed",
        "source": source_name,
        "tables": list(tables),
        "table": tables[0] if tables else "",
        "job": job_name,
        "step": step_key or "",
        "failed_steps": steps,
        "error_type": error_type,
        "error": _shorten(redact(error.strip()), ERROR_MAX_CHARS),
        "partition": partition or "",
        "run_id": run_id,
        "run_url": run_url(ui_url, run_id),
    }
    return Alert("run_failed", safe_subject(subject), _fit(body))


def _check_body(
    *,
    kind: AlertKind,
    source_name: str,
    table: str,
    asset_key: str,
    check_name: str,
    description: str | None,
    metadata: Mapping[str, Any],
    run_id: str,
    partition: str | None,
    ui_url: str,
    severity: str,
    evaluated_at: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": kind,
        "source": source_name,
        "table": table,
        "asset_key": asset_key,
        "check": check_name,
        "severity": severity,
        "passed": kind == "check_recovered",
        "description": redact(description or ""),
    }
    if check_name == SCHEMA_DRIFT_CHECK:
        diff = metadata.get("diff")
        if isinstance(diff, str):
            with contextlib.suppress(ValueError):
                diff = json.loads(diff)
        summary = (
            metadata.get("summary") or (diff.get("summary") if isinstance(diff, dict) else "") or description
        )
        body["summary"] = redact(str(summary or ""))
        body["changes"] = _int(metadata.get("changes"))
        body["diff"] = _scrub(diff) if diff is not None else None
        # The Markdown rendering repeats the diff; the UI shows it, the alert links there.
        rest = {k: v for k, v in metadata.items() if k not in ("diff", "summary", "changes", "diff_markdown")}
    else:
        rest = dict(metadata)
    body["metadata"] = _scrub(rest)
    body["partition"] = partition or ""
    body["run_id"] = run_id
    if evaluated_at:
        body["evaluated_at"] = evaluated_at
    body["run_url"] = run_url(ui_url, run_id)
    body["asset_url"] = asset_url(ui_url, asset_key)
    return body


def _scrub(value: Any) -> Any:
    """A JSON-safe copy of `value` with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(v) for v in value]
    return redact(str(value))


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(_ELLIPSIS)] + _ELLIPSIS


def _size(body: Mapping[str, Any]) -> int:
    return len(json.dumps(body, indent=2, default=str).encode("utf-8"))


def _fit(body: dict[str, Any]) -> dict[str, Any]:
    """Shrink the largest parts of a body that would not fit in one SNS message.

    A huge diff or metadata entry gives way first (the UI has all of it); the table, check, run id and
    links always stay.
    """
    if _size(body) <= BODY_MAX_BYTES:
        return body
    fitted = dict(body)
    for key in ("metadata", "diff", "error", "description", "summary"):
        if key not in fitted or _size(fitted) <= BODY_MAX_BYTES:
            continue
        value = fitted[key]
        if isinstance(value, str):
            fitted[key] = _shorten(value, 2_000)
        else:
            fitted[key] = {"truncated": f"too large for an alert; see {fitted.get('asset_url') or 'the UI'}"}
    return fitted
