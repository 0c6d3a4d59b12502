"""The fast (connectorx) reader: time slices, reader choice, and rows updated between two slices.

Exact values per MySQL type are proven for both readers by test_archive_types.py (parametrized).
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from etl_assets.lib.typemap import arrow_schema
from etl_assets.lib.windows import Window, pack_slices
from etl_assets.resources import arrow_reader
from etl_assets.resources.arrow_reader import ArrowReaderUnavailable, connectorx_url
from etl_assets.resources.source import SourceClient, SourceError
from etl_assets.resources.store import open_store
from etl_assets_tests.support import (
    archived_keys,
    committed,
    record_slice_queries,
    seed_visits,
    slice_readers,
    source_keys,
    wait_for,
)
from etl_assets_tests.test_archive import JAN_2023, make_job

DAY = Window(datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 2, tzinfo=UTC))


def hour(h: int) -> datetime:
    return datetime(2024, 3, 1, h, tzinfo=UTC)


def test_slices_cover_the_window_exactly_and_respect_the_row_limit() -> None:
    counts = [(hour(h), 40) for h in range(24)]
    slices = pack_slices(DAY, counts, max_rows=100)
    assert slices[0][0].start == DAY.start and slices[-1][0].end == DAY.end
    for (left, _), (right, _) in itertools.pairwise(slices):
        assert left.end == right.start, "slices must touch: no gap, no overlap"
    assert all(rows <= 100 for _, rows in slices)
    assert sum(rows for _, rows in slices) == 24 * 40
    assert len(slices) == 12, "two 40-row hours fit in 100 rows, three do not"


def test_an_hour_larger_than_the_limit_is_a_slice_of_its_own() -> None:
    slices = pack_slices(DAY, [(hour(2), 10), (hour(5), 500), (hour(9), 10)], max_rows=100)
    assert [rows for _, rows in slices] == [10, 500, 10]
    assert [s.start for s, _ in slices] == [DAY.start, hour(5), hour(9)]
    assert slices[-1][0].end == DAY.end


def test_no_rows_means_no_slices_and_one_busy_hour_spans_the_window() -> None:
    assert pack_slices(DAY, [], max_rows=10) == []
    assert pack_slices(DAY, [(hour(7), 3)], max_rows=10) == [(DAY, 3)]
    with pytest.raises(ValueError, match="max_rows"):
        pack_slices(DAY, [(hour(7), 3)], max_rows=0)


def test_connectorx_url_quotes_credentials_and_refuses_options_it_cannot_honour() -> None:
    url = sa.make_url("mysql+pymysql://etl:p%40ss%2Fw%3Ard@db.example:3307/clinic?charset=utf8mb4")
    assert connectorx_url(url) == "mysql://etl:p%40ss%2Fw%3Ard@db.example:3307/clinic"
    with pytest.raises(ArrowReaderUnavailable, match="ssl_ca"):
        connectorx_url(sa.make_url("mysql+pymysql://etl@db.example/clinic?ssl_ca=/etc/rds.pem"))


@pytest.mark.integration
def test_auto_falls_back_to_pymysql_when_the_url_needs_it_and_arrow_refuses(mysql_url: str) -> None:
    seed_visits(mysql_url, months=[(2023, 1)], rows_per_month=50)
    # An option the fast reader cannot pass on (PyMySQL takes it: a local_infile flag).
    url_with_option = (
        sa.make_url(mysql_url).update_query_dict({"local_infile": "0"}).render_as_string(hide_password=False)
    )
    auto = SourceClient(url_with_option, reader="auto")
    table = auto.reflect("visits")
    schema = arrow_schema(table)
    batches, _ = auto.stream_window(table, schema=schema, time_column="updated_at", window=JAN_2023,
                                    chunk_rows=20)  # fmt: skip
    assert sum(b.num_rows for b in batches) == 50
    assert auto.reader_note.startswith("PyMySQL") and "local_infile" in auto.reader_note
    strict = SourceClient(url_with_option, reader="arrow")
    with pytest.raises(SourceError, match=r"source\.reader is 'arrow'.*local_infile"):
        strict.stream_window(table, schema=schema, time_column="updated_at", window=JAN_2023, chunk_rows=20)
    auto.dispose()
    strict.dispose()


def _seed_january_with_spread_keys(mysql_url: str, key_step: int) -> set[int]:
    """2,000 rows in January 2023 with ids `key_step` apart, every 7th id moved to February (rows of
    another month inside January's key range, which a key-range read must skip); January's ids."""
    seed_visits(mysql_url, months=[(2023, 1)], rows_per_month=2000)
    engine = sa.create_engine(mysql_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE visits SET id = id * :step ORDER BY id DESC"), {"step": key_step})
        conn.execute(sa.text("UPDATE visits SET updated_at = '2023-02-10' WHERE id % 7 = 0"))
        january = {
            row[0] for row in conn.execute(sa.text("SELECT id FROM visits WHERE updated_at < '2023-02-01'"))
        }
    engine.dispose()
    return january


@pytest.mark.integration
@pytest.mark.parametrize(("key_step", "by_key"), [(1, True), (2, True), (4, False)])
def test_arrow_reader_reads_in_bounded_slices(
    mysql_url: str, key_step: int, by_key: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys spread up to 3x the window's rows are read in key ranges, sparser keys in time slices."""
    in_window = len(_seed_january_with_spread_keys(mysql_url, key_step))
    queries = record_slice_queries(monkeypatch)
    client = SourceClient(mysql_url, reader="arrow")
    table = client.reflect("visits")
    batches, counter = client.stream_window(
        table, schema=arrow_schema(table), time_column="updated_at", window=JAN_2023, chunk_rows=300
    )
    sizes = [b.num_rows for b in batches]
    assert sum(sizes) == in_window and max(sizes) <= 300
    assert isinstance(counter, arrow_reader.ZeroDateCounter) and counter.slices >= in_window // 300
    assert len(queries) == counter.slices
    assert all(("FORCE INDEX (PRIMARY)" in q and "BETWEEN" in q) == by_key for q in queries)
    # The archive's "extracted" line names the plan that ran.
    assert client.reader_note == (
        "Arrow (connectorx, key ranges)" if by_key else "Arrow (connectorx, time slices)"
    )
    client.dispose()


@pytest.mark.integration
def test_an_hour_too_big_for_one_slice_streams_the_window_through_the_cursor(
    mysql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bulk UPDATE stamps 1,500 rows with one second: as a time slice connectorx would hold them all
    at once, whatever chunk_rows says. The window is streamed instead, in batches of chunk_rows."""
    expected = _seed_january_with_spread_keys(mysql_url, key_step=4)  # sparse keys: the time plan
    engine = sa.create_engine(mysql_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE visits SET updated_at = '2023-01-20 10:00:00' WHERE updated_at < '2023-02-01' LIMIT 1500"
            )
        )
    engine.dispose()
    queries = record_slice_queries(monkeypatch)
    client = SourceClient(mysql_url, reader="arrow")
    table = client.reflect("visits")
    batches, counter = client.stream_window(
        table, schema=arrow_schema(table), time_column="updated_at", window=JAN_2023, chunk_rows=300
    )
    sizes, read = [], []
    for batch in batches:
        sizes.append(batch.num_rows)
        read += batch.column("id").to_pylist()
    assert sorted(read) == sorted(expected) and len(read) == len(set(read))
    assert max(sizes) <= 300, "memory bounded by chunk_rows"
    assert queries == [], "no connectorx slice"
    assert not isinstance(counter, arrow_reader.ZeroDateCounter)
    assert client.reader_note.startswith("PyMySQL (streaming cursor): one hour of the window holds 1,5")
    client.dispose()


@pytest.mark.integration
@pytest.mark.parametrize(("key_step", "by_key"), [(2, True), (4, False)])
def test_a_window_that_fits_in_one_read_is_one_query_of_exactly_its_rows(
    mysql_url: str, key_step: int, by_key: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _seed_january_with_spread_keys(mysql_url, key_step)
    queries = record_slice_queries(monkeypatch)
    client = SourceClient(mysql_url, reader="arrow")
    table = client.reflect("visits")
    # 2,000 key values (4,000 or 8,000 apart by step) but fewer rows than chunk_rows in the window
    batches, _ = client.stream_window(
        table, schema=arrow_schema(table), time_column="updated_at", window=JAN_2023, chunk_rows=len(expected)
    )
    read = [key for b in batches for key in b.column("id").to_pylist()]
    assert sorted(read) == sorted(expected) and len(read) == len(set(read))
    assert len(queries) == 1 and ("FORCE INDEX (PRIMARY)" in queries[0]) == by_key
    client.dispose()


@pytest.mark.integration
def test_the_first_slice_is_read_before_a_batch_is_asked_for_and_closing_ends_the_reader(
    mysql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What lets a backfill start the next month's read early: the read begins with the stream."""
    seed_visits(mysql_url, months=[(2023, 1)], rows_per_month=200)
    queries = record_slice_queries(monkeypatch)
    readers_before = slice_readers()
    client = SourceClient(mysql_url, reader="arrow")
    table = client.reflect("visits")
    batches, _ = client.stream_window(
        table, schema=arrow_schema(table), time_column="updated_at", window=JAN_2023, chunk_rows=50
    )
    assert wait_for(lambda: queries, 10), "no slice was read before the first batch was asked for"
    batches.close()  # never iterated: the reader still ends
    assert wait_for(lambda: not slice_readers() - readers_before, 10)
    client.dispose()


@pytest.mark.integration
@pytest.mark.parametrize("plan", ["time slices", "key ranges"])
def test_a_row_updated_between_two_slices_is_never_archived_twice_nor_lost(
    mysql_url: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, plan: str
) -> None:
    """A row read in the first slice and moved later in the window must stay in the source.

    Read by time slices it is read twice (once per slice): both copies are kept back. Read by key
    ranges it is read once, and the purge finds its time changed and keeps it.
    """
    seed_visits(mysql_url, months=[(2023, 1)], rows_per_month=1500)
    engine = sa.create_engine(mysql_url)
    if plan == "time slices":
        with engine.begin() as conn:  # keys 10 apart: too sparse for key ranges
            conn.execute(sa.text("UPDATE visits SET id = id * 10 ORDER BY id DESC"))
    with engine.connect() as conn:
        first_id, first_time = conn.execute(
            sa.text("SELECT id, updated_at FROM visits ORDER BY updated_at, id LIMIT 1")
        ).one()
    moved_to = datetime(2023, 1, 30, 12, 0, 0)
    real_read_slice = arrow_reader.read_slice
    reads = {"n": 0}
    queries: list[str] = []

    def read_then_move_a_row(url: str, query: str) -> pa.Table:
        result = real_read_slice(url, query)
        queries.append(query)
        reads["n"] += 1
        if reads["n"] == 1:
            # Another application updates the row after the first slice has read it.
            with engine.begin() as conn:
                conn.execute(
                    sa.text("UPDATE visits SET updated_at = :t WHERE id = :i"), {"t": moved_to, "i": first_id}
                )
        return result

    monkeypatch.setattr(arrow_reader, "read_slice", read_then_move_a_row)
    tables = """
  - name: visits
    archive: {retention: 1 year, batch_size: 250, part_rows: 1000, chunk_rows: 200}
"""
    store = open_store(f"s3://{s3_bucket}/archive", region="us-east-1")
    before = source_keys(mysql_url)
    job = make_job(mysql_url, store, tables=tables)
    logs: list[str] = []
    job.log = logs.append
    report = job.run()
    assert reads["n"] > 1, "the window must have been read in several slices"
    archived = archived_keys(store)
    remaining = source_keys(mysql_url)
    assert len(archived) == len(set(archived)), "no key archived twice"
    assert first_id in remaining and first_id not in archived
    assert remaining | set(archived) == before and remaining.isdisjoint(archived)
    assert report.rows_committed == 1499 and report.rows_purged == 1499
    assert all(("FORCE INDEX (PRIMARY)" in q) == (plan == "key ranges") for q in queries)
    if plan == "time slices":
        assert report.rows_kept_changed == 2, "both copies of the row read twice are kept back"
        assert committed(store)[0].repeated_key_hashes, "the manifest records the keys read twice"
        assert any("read twice" in line for line in logs)
    else:
        assert report.rows_kept_changed == 1, "the row read once is kept: its time changed since"
        assert not committed(store)[0].repeated_key_hashes
    with engine.connect() as conn:
        current = conn.execute(
            sa.text("SELECT updated_at FROM visits WHERE id = :i"), {"i": first_id}
        ).scalar_one()
    assert current == moved_to != first_time, "the update is kept"
    engine.dispose()


DATED_DDL = """
CREATE TABLE dated (
    id INT PRIMARY KEY,
    updated_at DATETIME NOT NULL,
    seen DATE NULL,
    booked DATETIME NULL,
    KEY idx_dated_updated_at (updated_at)
)
"""


def _seed_dated(url: str, invalid: dict[int, tuple[str, str]]) -> None:
    """40 rows in January 2023 (ids 1..40); `invalid` sets (seen, booked) text of some ids."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS dated")
        conn.exec_driver_sql(DATED_DDL)
        # Zero dates exist only where a session allowed them.
        conn.exec_driver_sql("SET SESSION sql_mode = ''")
        for i in range(1, 41):
            seen, booked = invalid.get(i, (f"2022-12-{i % 28 + 1:02d}", f"2022-11-{i % 28 + 1:02d} 08:30:00"))
            conn.execute(
                sa.text("INSERT INTO dated VALUES (:i, :t, :seen, :booked)"),
                {"i": i, "t": datetime(2023, 1, 1 + i % 28, 12), "seen": seen, "booked": booked},
            )
    engine.dispose()


def _read_dated(url: str, reader: Any) -> tuple[pa.Table, dict[str, int], Any]:
    client = SourceClient(url, reader=reader)
    table = client.reflect("dated")
    batches, counter = client.stream_window(
        table, schema=arrow_schema(table), time_column="updated_at", window=JAN_2023, chunk_rows=10
    )
    rows = pa.Table.from_batches(list(batches)).sort_by("id")
    client.dispose()
    return rows, dict(counter.invalid_by_column), counter


@pytest.mark.integration
def test_slices_without_invalid_dates_read_the_date_columns_unguarded(
    mysql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plain read is the one sent; it yields exactly what the PyMySQL reader yields."""
    _seed_dated(mysql_url, {})
    queries = record_slice_queries(monkeypatch)
    fast, fast_invalid, counter = _read_dated(mysql_url, "arrow")
    slow, slow_invalid, _ = _read_dated(mysql_url, "pymysql")
    assert fast.num_rows == 40 and fast.equals(slow)
    assert fast_invalid == slow_invalid == {}
    assert not counter.guarded_dates and counter.reread_slices == 0
    assert len(queries) == counter.slices == 4
    assert not any("dayofmonth" in q.lower() for q in queries), "no slice needed the date guards"


@pytest.mark.integration
def test_a_zero_date_makes_its_slice_read_again_guarded_and_nothing_differs_from_pymysql(
    mysql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Zero dates panic connectorx: that slice is read again with the guards, and so is every later
    slice of the table on that client. Year-0 dates decode without a panic and are nulled too."""
    _seed_dated(
        mysql_url,
        {
            5: ("0000-01-01", "2022-11-05 08:30:00"),  # year 0, valid month and day: no panic
            25: ("0000-00-00", "2022-11-25 08:30:00"),
            26: ("2022-12-26", "2024-00-12 10:00:00"),
        },
    )
    queries = record_slice_queries(monkeypatch)
    client = SourceClient(mysql_url, reader="arrow")
    table = client.reflect("dated")
    first, counter = client.stream_window(
        table, schema=arrow_schema(table), time_column="updated_at", window=JAN_2023, chunk_rows=10
    )
    fast = pa.Table.from_batches(list(first)).sort_by("id")
    slow, slow_invalid, _ = _read_dated(mysql_url, "pymysql")
    assert fast.num_rows == 40 and fast.equals(slow), "the failed read left nothing behind"
    assert dict(counter.invalid_by_column) == slow_invalid == {"seen": 2, "booked": 1}
    by_id = {row["id"]: row for row in fast.to_pylist()}
    assert by_id[5]["seen"] is None and by_id[25]["seen"] is None and by_id[26]["booked"] is None
    assert by_id[24]["seen"] is not None and by_id[27]["booked"] is not None
    guarded = ["dayofmonth" in q.lower() for q in queries]
    assert guarded == [False, False, False, True, True], "slice 3 (ids 21-30) failed plain, was re-read"
    assert counter.guarded_dates and counter.reread_slices == 1 and counter.slices == 4

    queries.clear()
    again, second = client.stream_window(
        table, schema=arrow_schema(table), time_column="updated_at", window=JAN_2023, chunk_rows=10
    )
    assert pa.Table.from_batches(list(again)).sort_by("id").equals(fast)
    assert all("dayofmonth" in q.lower() for q in queries) and len(queries) == 4
    assert second.reread_slices == 0, "a table known to hold zero dates is read guarded from the start"
    client.dispose()
