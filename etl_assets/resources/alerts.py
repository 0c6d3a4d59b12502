"""Where alerts go: an SNS topic, or the log when no topic is configured.

Publishing is best effort by design. An alert is sent from a sensor, after the run it reports on has
already finished, so an SNS outage, a missing permission or a deleted topic must never fail anything:
`publish` logs what went wrong (with the alert itself, so it is not lost) and returns None. The
endpoint comes from `AWS_ENDPOINT_URL_SNS` / `AWS_ENDPOINT_URL` (boto3 reads them itself), so the
same code talks to SNS or to a local stand-in.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import dagster as dg
from pydantic import Field

from etl_assets.lib import envvars
from etl_assets.lib.alerts import Alert, redact

_DEFAULT_UI_URL = "http://127.0.0.1:3000"
# A sensor tick should report an outage within seconds, not hang on retries.
_CONNECT_TIMEOUT_SECONDS = 5
_READ_TIMEOUT_SECONDS = 10
_MAX_ATTEMPTS = 2

_module_log = logging.getLogger(__name__)


class AlertLog(Protocol):
    """What `publish` needs from a logger (`logging.Logger`, a sensor's `context.log`)."""

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...

    def error(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...

    def info(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...


class AlertPublisher(dg.ConfigurableResource):
    """Publishes alerts to SNS (subject + JSON body), or logs them when no topic is set.

    Example:
        ```python
        AlertPublisher(sns_topic_arn="${ALERTS_SNS_TOPIC_ARN:-}", ui_url="${DAGSTER_UI_URL:-http://127.0.0.1:3000}")
        ```
    """

    sns_topic_arn: str = Field(
        default="",
        description="SNS topic ARN (a ${VAR} template is resolved when an alert is sent); empty: log only",
    )
    ui_url: str = Field(
        default="${DAGSTER_UI_URL:-http://127.0.0.1:3000}",
        description="Base URL of the Dagster UI, for run and asset links in alerts",
    )
    region: str = Field(
        default="${AWS_DEFAULT_REGION:-us-east-1}",
        description="AWS region for SNS when the topic ARN does not name one (template)",
    )
    config_file: str = Field(default="", description="Config file the settings came from, for error messages")

    def topic_arn(self) -> str:
        """The resolved topic ARN ('' means alerts go to the log).

        Raises:
            ConfigError: the template names a variable that is not set.
        """
        from etl_assets.config import resolve_setting

        return resolve_setting(self.config_file, "alerts.sns_topic_arn", self.sns_topic_arn).strip()

    def ui_base(self) -> str:
        """The Dagster UI's base URL without a trailing slash (the default when unresolvable)."""
        try:
            resolved = envvars.resolve(self.ui_url).strip()
        except envvars.TemplateError:
            resolved = ""
        return redact(resolved or _DEFAULT_UI_URL).rstrip("/")

    def get_client(self, topic_arn: str = "") -> Any:
        """A boto3 SNS client in the topic's region, with short timeouts and few retries."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "sns",
            region_name=_arn_region(topic_arn) or self._region(),
            config=Config(
                connect_timeout=_CONNECT_TIMEOUT_SECONDS,
                read_timeout=_READ_TIMEOUT_SECONDS,
                retries={"max_attempts": _MAX_ATTEMPTS, "mode": "standard"},
            ),
        )

    def publish(self, alert: Alert, log: AlertLog | None = None) -> str | None:
        """Send `alert`; returns the SNS MessageId, or None when it was only logged or could not be sent.

        Never raises: an unset variable, an unreachable endpoint or an SNS error is logged as an
        error together with the alert, and the caller carries on.
        """
        log = log or _module_log
        try:
            topic = self.topic_arn()
        except Exception as exc:  # noqa: BLE001 - ConfigError: names the variable, never a value
            log.error(f"alert not sent ({redact(str(exc))}): {alert.subject}\n{alert.message}")
            return None
        if not topic:
            log.warning(f"alert (no SNS topic configured): {alert.subject}\n{alert.message}")
            return None
        try:
            response = self.get_client(topic).publish(
                TopicArn=topic,
                Subject=alert.subject,
                Message=alert.message,
                MessageAttributes=_attributes(alert),
            )
        except Exception as exc:  # noqa: BLE001 - an SNS outage must never fail a run
            log.error(
                f"alert not sent to the SNS topic in alerts.sns_topic_arn ({type(exc).__name__}: "
                f"{redact(str(exc))}); check that the topic exists in its region and that this process "
                f"may sns:Publish to it: {alert.subject}\n{alert.message}"
            )
            return None
        message_id = str(response.get("MessageId") or "") or None
        log.info(f"alert sent to SNS (message {message_id}): {alert.subject}")
        return message_id

    def _region(self) -> str:
        try:
            return envvars.resolve(self.region).strip() or "us-east-1"
        except envvars.TemplateError:
            return "us-east-1"


def _arn_region(arn: str) -> str:
    """`us-east-1` from `arn:aws:sns:us-east-1:123456789012:topic`, else ''."""
    parts = arn.split(":")
    return parts[3] if len(parts) >= 6 and parts[0] == "arn" else ""


def _attributes(alert: Alert) -> dict[str, dict[str, str]]:
    """SNS message attributes subscribers can filter on (empty values are not allowed)."""
    values = {"kind": alert.kind, "table": alert.table, "source": str(alert.body.get("source") or "")}
    return {
        name: {"DataType": "String", "StringValue": value[:256]} for name, value in values.items() if value
    }
