"""One step serving many tables: each table's failure is kept, the others still run, the step then fails.

Observing the sources and running the replica checks are one step each for every table, not one per
table: a code location with 200 tables then loads ~1.5 s faster (`make bench`, graph_200_tables), and
the checks job every 15 minutes starts two step processes instead of one per table and check. What a
step per table gave, this keeps: a table that fails does not stop the others from reporting, and the
run still fails (one run-failure alert) with an error that names each table that failed and why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from sqlalchemy import exc as sa_exc

from etl_assets.resources.source import describe_error

T = TypeVar("T")
P = ParamSpec("P")


class TablesFailed(Exception):
    """Some of a step's tables failed; the others completed. The message names each failure."""


class TableFailures:
    """Collects the failures of a step that works through several tables.

    Args:
        doing: what the step does, for the error (`observing`, `checking`).
        of_total: how many tables (or checks) the step works through.
    """

    def __init__(self, *, doing: str, of_total: int) -> None:
        self.doing = doing
        self.of_total = of_total
        self.failures: list[str] = []
        self._first: Exception | None = None

    def run(self, what: str, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | None:
        """`work(*args, **kwargs)`, or None after recording its error against `what` (`table 'visits'`)."""
        try:
            return work(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - recorded, raised together by raise_if_any
            # SQLAlchemy's own message quotes the statement and its bound values.
            reason = (
                describe_error(exc) if isinstance(exc, sa_exc.DBAPIError) else f"{type(exc).__name__}: {exc}"
            )
            self.failures.append(f"{what}: {reason}")
            self._first = self._first or exc
            return None

    def raise_if_any(self) -> None:
        """Raise `TablesFailed` naming every recorded failure, chained to the first one.

        Raises:
            TablesFailed: one or more tables failed.
        """
        if not self.failures:
            return
        done = self.of_total - len(self.failures)
        raise TablesFailed(
            f"{self.doing} failed for {len(self.failures)} of {self.of_total} ({done} completed and "
            f"reported): " + "; ".join(self.failures)
        ) from self._first
