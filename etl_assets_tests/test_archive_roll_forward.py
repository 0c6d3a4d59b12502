"""A row that moves to another month while a crashed run's verified staging waits to be rolled forward.

Found by `make chaos` (randomized kills with a writer that moves rows between months): run A of August
extracts and verifies row k, then dies before purging it; the row's time column is changed to January;
then January is archived. If January deleted k first, August's roll-forward could not tell "missing
because A deleted it" from "missing because it moved and was archived elsewhere", and would publish
A's stale copy too: k archived twice (design.md section 5, invariant 7). Every run therefore finishes
the table's verified staging of other months first (under the table lock): k is then "changed" for
August, stays in MySQL, and January archives it once.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from etl_assets.engine.archive import ArchiveJob, ArchiveReport
from etl_assets.lib.windows import Window
from etl_assets.resources.source import SourceClient
from etl_assets.resources.store import ObjectStore, open_store
from etl_assets_tests.reliability import Reliability
from etl_assets_tests.support import archived_keys, config_for, seed_visits, source_keys

pytestmark = pytest.mark.integration

TABLES = "  - name: visits\n    archive: {retention: 1 year, batch_size: 100}\n"
JANUARY = ("2023-01-01", Window(datetime(2023, 1, 1, tzinfo=UTC), datetime(2023, 2, 1, tzinfo=UTC)))
AUGUST = ("2023-08-01", Window(datetime(2023, 8, 1, tzinfo=UTC), datetime(2023, 9, 1, tzinfo=UTC)))


class Crash(Exception):
    """Stands in for SIGKILL right after a run's staging manifest was marked verified."""


def archive(
    url: str, store: ObjectStore, partition: tuple[str, Window], *, crash_after_verify: bool = False
) -> ArchiveReport:
    def log(message: str) -> None:
        if crash_after_verify and message.startswith("verified "):
            raise Crash(message)

    table = config_for(source_url=url, archive_url="s3://unused/a", tables=TABLES).tables[0]
    client = SourceClient(url)
    try:
        return ArchiveJob(source=client, store=store, table=table, source_table=client.reflect("visits"),
                          partition_key=partition[0], window=partition[1], run_id=uuid.uuid4().hex,
                          now=datetime.now(UTC), log=log).run()  # fmt: skip
    finally:
        client.dispose()


def test_a_row_moved_to_another_month_before_roll_forward_is_archived_once(
    mysql_url: str, s3_bucket: str, tmp_path: Path, reliability: Reliability
) -> None:
    reliability.category = "kill point"
    seed_visits(mysql_url, months=[(2023, 1), (2023, 8)], rows_per_month=50)
    original = source_keys(mysql_url)
    store = open_store(f"s3://{s3_bucket}/archive", region="us-east-1")
    engine = sa.create_engine(mysql_url)
    with engine.connect() as conn:
        moved = conn.execute(sa.text("SELECT MAX(id) FROM visits WHERE updated_at >= '2023-08-01'")).scalar()

    with pytest.raises(Crash):
        archive(mysql_url, store, AUGUST, crash_after_verify=True)
    assert source_keys(mysql_url) == original, "run A died before its purge"
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE visits SET updated_at = '2023-01-15 12:00:00' WHERE id = :k"), {"k": moved}
        )
    engine.dispose()
    january = archive(mysql_url, store, JANUARY)
    assert [r.split(":")[0] for r in january.recovered_runs] == ["2023-08-01"], "B finished A's August first"
    assert january.rows_committed == 51, "run B archives January and the moved row"
    rolled = archive(mysql_url, store, AUGUST)
    assert rolled.recovered_runs == [] and rolled.rows_committed == 0, "nothing left for run C"

    archived = archived_keys(store)
    reliability.checked(rows=len(original), lost=len(original - set(archived) - source_keys(mysql_url)))
    twice = [key for key, count in Counter(archived).items() if count > 1]
    assert twice == [], f"key(s) archived twice: {twice}"
    assert sorted(archived) == sorted(original)
