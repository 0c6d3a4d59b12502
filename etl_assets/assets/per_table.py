"""One step serving many tables: each table's failure is kept, the others still run, the step then fails.

Observing the sources and running the replica checks are one step each for every table, and the
archive and replica assets one step per group of tables partitioned alike, not one per table: a code
location with 200 tables then validates in ~3 s instead of ~5.5 (`make bench`, graph_200_tables),
and the checks job every 15 minutes starts two step processes instead of one per table and check.
What a step per table gave, this keeps: a table that fails does not stop the others from reporting,
and the run still fails (one run-failure alert) with an error that names each table that failed and
why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from typing import ParamSpec, TypeVar

import dagster as dg
from sqlalchemy import exc as sa_exc

from etl_assets.config import TableConfig
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
            if isinstance(exc, dg.Failure):  # already worded for the UI: what failed and the fix
                reason = exc.description or type(exc).__name__
            elif isinstance(exc, sa_exc.DBAPIError):  # SQLAlchemy's message quotes the bound values
                reason = describe_error(exc)
            else:
                reason = f"{type(exc).__name__}: {exc}"
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


def each_table(
    tables: Mapping[dg.AssetKey, TableConfig],
    selected: AbstractSet[dg.AssetKey],
    work: Callable[[TableConfig], T],
    *,
    doing: str,
) -> Iterator[T]:
    """Yield `work(table)` for each table whose asset the run selected, in turn (config order).

    A failure does not stop the tables after it; once all have run, raise `TablesFailed` naming every
    table that failed. With one table (what a schedule or the sensor starts) its error is raised as
    it is, as a step of its own would.

    Raises:
        TablesFailed: one or more of several tables failed.
    """
    chosen = [table for key, table in tables.items() if key in selected]
    if len(chosen) == 1:
        yield work(chosen[0])
        return
    failures = TableFailures(doing=doing, of_total=len(chosen))
    for table in chosen:
        result = failures.run(f"table '{table.name}'", work, table)
        if result is not None:
            yield result
    failures.raise_if_any()
