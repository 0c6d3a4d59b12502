"""Scenario records for the reliability summary that `make chaos` prints.

Every reliability test is one scenario of the table `make chaos` ends with (scenario, cycles, rows
checked, rows lost, result). A test says what it accounted for through the `reliability` fixture
(defined in conftest.py, available to every test):

    def test_source_restarted_mid_purge(reliability: Reliability, ...) -> None:
        ...  # run, fail, re-run
        original, found = ..., ...
        reliability.checked(rows=len(original), lost=len(original - found))

`checked` may be called several times (once per cycle, say); rows add up, `cycles` counts the calls
unless set explicitly. The result (pass or fail) comes from the test's own outcome, so a test that
fails after recording is still reported as a failure. Helpers that do the accounting for many tests
(for example `assert_accounted` in test_archive_faults.py) call `current().checked(...)` instead of
taking the fixture.

Tests in the files listed in `CATEGORIES` are recorded even when they never call `checked` (rows
checked 0), so a reliability test cannot silently drop out of the table. Other tests are recorded
only when they call `checked`.

Records go to pytest's terminal summary (one line per scenario) and, when `ETL_ASSETS_RELIABILITY_LOG`
names a file, are appended to it as JSON lines; `etl_assets_tests.chaos` reads that file to print its
table.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

LOG_ENV = "ETL_ASSETS_RELIABILITY_LOG"

# Test files whose every test is a reliability scenario, and the category it is listed under.
CATEGORIES: dict[str, str] = {
    "test_archive_crash.py": "kill point",
    "test_archive_roll_forward.py": "kill point",
    "test_archive_faults.py": "S3 faults (archive)",
    "test_mysql_faults.py": "MySQL faults",
    "test_replica_lag.py": "MySQL replica lag",
    "test_concurrency.py": "concurrency",
    "test_warehouse_faults.py": "warehouse faults",
    "test_hostile_names.py": "hostile input",
    "test_hostile_values.py": "hostile input",
    "test_tampered_archive.py": "hostile input",
    "test_secrets.py": "secrets",
}


@dataclass
class Record:
    """One line of the summary table."""

    scenario: str
    cycles: int
    rows_checked: int
    rows_lost: int
    result: str

    def line(self) -> str:
        """The one-line result a scenario prints."""
        return (
            f"{self.result.upper():9} {self.scenario}: {self.cycles} cycle(s), {self.rows_checked:,} rows checked, "
            f"{self.rows_lost} lost"
        )


class Reliability:
    """What one test checked; filled by the test, turned into a `Record` when the test ends."""

    def __init__(self, category: str, name: str) -> None:
        self.category = category
        self.name = name
        self.rows_checked = 0
        self.rows_lost = 0
        self.calls = 0
        self.cycles: int | None = None

    def checked(self, *, rows: int, lost: int = 0, cycles: int | None = None) -> None:
        """Record that `rows` rows were accounted for and `lost` of them were missing.

        Args:
            rows: rows whose place (source, archive, replica) the test verified.
            lost: rows that were expected and found nowhere; any non-zero value is a failed scenario.
            cycles: set the cycle count explicitly (default: the number of `checked` calls).
        """
        self.rows_checked += rows
        self.rows_lost += lost
        self.calls += 1
        if cycles is not None:
            self.cycles = cycles

    def record(self, outcome: str) -> Record:
        """The summary line of this test, given its outcome (`passed`, `failed`, `skipped`, `xfail`).

        A strict xfail documents a known bug: it is listed as `known bug`, neither pass nor FAIL.
        """
        scenario = f"{self.category}: {self.name}" if self.category else self.name
        result = {"passed": "pass", "skipped": "skip", "xfail": "known bug"}.get(outcome, "FAIL")
        if self.rows_lost:
            result = "FAIL"
        return Record(scenario, self.cycles or max(self.calls, 1), self.rows_checked, self.rows_lost, result)


_current: Reliability | None = None


def current() -> Reliability:
    """The running test's `Reliability` (for shared helpers that do a test's accounting)."""
    if _current is None:
        raise RuntimeError("no reliability record is active; use the `reliability` fixture")
    return _current


def activate(record: Reliability | None) -> None:
    """Make `record` the running test's record (None when the test ended); called by conftest."""
    global _current
    _current = record


def scenario_name(nodeid: str) -> tuple[str, str]:
    """(category, readable name) of a test node id, e.g. `test_x.py::test_a_b[p]` -> (cat, `a b [p]`)."""
    path, _, test = nodeid.partition("::")
    file_name = path.rsplit("/", 1)[-1]
    base, bracket, param = test.partition("[")
    readable = base.removeprefix("test_").replace("_", " ")
    if bracket:
        readable += f" [{param}"
    return CATEGORIES.get(file_name, ""), readable


def is_reliability_file(nodeid: str) -> bool:
    """True for tests in the files of `CATEGORIES`."""
    return nodeid.partition("::")[0].rsplit("/", 1)[-1] in CATEGORIES


def append(record: Record) -> None:
    """Append `record` to the file named by ETL_ASSETS_RELIABILITY_LOG, if set."""
    target = os.environ.get(LOG_ENV)
    if not target:
        return
    with Path(target).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(asdict(record)) + "\n")


def read(path: Path) -> list[Record]:
    """Every record in a log file written by `append`."""
    if not path.exists():
        return []
    return [Record(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]


def table(records: list[Record]) -> str:
    """The Markdown summary table (the README shows it)."""
    lines = ["| scenario | cycles | rows checked | rows lost | result |", "|---|---:|---:|---:|---|"]
    lines += [
        f"| {r.scenario} | {r.cycles} | {r.rows_checked:,} | {r.rows_lost} | {r.result} |" for r in records
    ]
    return "\n".join(lines)
