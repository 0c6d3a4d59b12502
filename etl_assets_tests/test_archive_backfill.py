"""ArchiveBackfill: each month purged while the next is extracted, failures stop it, nothing is lost."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from etl_assets.engine.archive import ArchiveBackfill, ArchiveError, LogRelay
from etl_assets.resources.source import SourceClient
from etl_assets.resources.store import ObjectStore, StoreError, open_store
from etl_assets_tests.crash_child import BACKFILL_MONTHS, month_jobs
from etl_assets_tests.support import (
    archived_keys,
    committed,
    execute_sql,
    month_keys,
    record_slice_queries,
    seed_visits,
    slice_readers,
    source_keys,
    wait_for,
    wrap,
)

pytestmark = pytest.mark.integration

TABLES = """
  - name: visits
    archive: {retention: 1 year, batch_size: 250, part_rows: 1000, chunk_rows: 500, max_threads_running: 500}
"""
MONTHS = BACKFILL_MONTHS  # December 2022 to February 2023


@pytest.fixture
def client(mysql_url: str) -> Iterator[SourceClient]:
    seed_visits(mysql_url, months=[(2022, 12), (2023, 1), (2023, 2)], rows_per_month=2000)
    client = SourceClient(mysql_url)
    yield client
    client.dispose()


@pytest.fixture
def store(s3_bucket: str) -> ObjectStore:
    return open_store(f"s3://{s3_bucket}/archive", region="us-east-1")


def backfill(client: SourceClient, store: ObjectStore) -> ArchiveBackfill:
    return ArchiveBackfill(jobs=month_jobs(client, store, MONTHS, tables=TABLES))


def _is_month(key: str, month: str) -> bool:
    return f"/{month}/" in key and "/_staging/" in key


def _committed_rows_by_partition(store: ObjectStore) -> dict[str, int]:
    rows: dict[str, int] = {}
    for manifest in committed(store):
        rows[manifest.partition] = rows.get(manifest.partition, 0) + manifest.rows
    return rows


def test_month_is_purged_while_the_next_is_extracted(client: SourceClient, store: ObjectStore) -> None:
    january_extracting = threading.Event()
    december_deletes: list[tuple[str, bool]] = []

    def on_put(key: str, *_args: Any, **_kwargs: Any) -> None:
        if _is_month(key, "year=2023/month=01"):
            january_extracting.set()

    def on_delete(source: Any, **kwargs: Any) -> None:
        times = kwargs["rows"].column("updated_at").to_pylist()
        if times and times[0].month == 12:
            # Serially, January could not start extracting until December's purge ended: this wait
            # would time out. Overlapped, January's first part appears while December still purges.
            seen = january_extracting.wait(timeout=15)
            december_deletes.append((threading.current_thread().name, seen))

    wrap(store, "put_file", on_put)
    wrap(client, "delete_unchanged", on_delete)
    original = source_keys(client.engine.url.render_as_string(hide_password=False))

    reports = backfill(client, store).run()

    assert [r.partition for r in reports] == ["2022-12-01", "2023-01-01", "2023-02-01"]
    assert december_deletes and all(seen for _, seen in december_deletes)
    assert all(name.startswith("etl-purge") for name, _ in december_deletes)
    archive = archived_keys(store)
    assert len(archive) == len(set(archive)) and set(archive) == original
    assert sum(r.rows_purged for r in reports) == len(original)
    assert not [k for k in store.list("visits") if "/_staging/" in k]
    assert {r.partition: r.committed_rows_in_partition for r in reports} == _committed_rows_by_partition(
        store
    )


def test_a_failing_purge_stops_the_backfill_and_the_rerun_finishes_it(
    client: SourceClient, store: ObjectStore
) -> None:
    url = client.engine.url.render_as_string(hide_password=False)
    original = source_keys(url)
    calls = {"january": 0}

    def on_delete(source: Any, **kwargs: Any) -> None:
        if kwargs["rows"].column("updated_at").to_pylist()[0].month == 1:
            calls["january"] += 1
            if calls["january"] == 3:
                raise ArchiveError("injected: the delete of a January batch failed")

    wrap(client, "delete_unchanged", on_delete)
    with pytest.raises(ArchiveError, match="injected"):
        backfill(client, store).run()

    # December is committed; January stopped mid purge; nothing is in both places or lost.
    source_now, archive_now = source_keys(url), archived_keys(store)
    assert source_now.isdisjoint(archive_now) and len(archive_now) == len(set(archive_now))
    assert [m.partition for m in committed(store)] == ["2022-12-01"]
    assert any("/_staging/" in k and "month=01" in k for k in store.list("visits"))

    rerun_client = SourceClient(url)
    reports = backfill(rerun_client, store).run()
    rerun_client.dispose()
    archive = archived_keys(store)
    assert source_keys(url) == set()
    assert len(archive) == len(set(archive)) and set(archive) == original
    assert any(r.recovered_runs for r in reports), "the rerun should roll January's verified staging forward"
    # December was committed by the first run, January by the rerun's roll-forward, February by the rerun.
    assert {r.partition: r.committed_rows_in_partition for r in reports} == _committed_rows_by_partition(
        store
    )
    assert _committed_rows_by_partition(store) == {"2022-12-01": 2000, "2023-01-01": 2000, "2023-02-01": 2000}


def test_a_failing_extraction_stops_the_purge_in_flight(
    client: SourceClient, store: ObjectStore, s3_bucket: str
) -> None:
    url = client.engine.url.render_as_string(hide_password=False)
    original = source_keys(url)
    january_purging = threading.Event()
    extraction_failed = threading.Event()

    def on_delete(source: Any, **kwargs: Any) -> None:
        if kwargs["rows"].column("updated_at").to_pylist()[0].month == 1:
            january_purging.set()
            extraction_failed.wait(timeout=15)  # hold January's purge until February's extraction failed
            time.sleep(0.2)  # and keep it slow, so the stop request lands well before its end

    def on_put(key: str, *_args: Any, **_kwargs: Any) -> None:
        if _is_month(key, "year=2023/month=02"):
            assert january_purging.wait(timeout=15)
            extraction_failed.set()
            raise StoreError("injected: the upload of a February part failed")

    wrap(client, "delete_unchanged", on_delete)
    wrap(store, "put_file", on_put)
    with pytest.raises(StoreError, match="injected"):
        backfill(client, store).run()

    # January stopped at its next batch: most of it is still in MySQL, all of it in verified staging.
    source_now, archive_now = source_keys(url), archived_keys(store)
    assert source_now.isdisjoint(archive_now)
    assert [m.partition for m in committed(store)] == ["2022-12-01"]
    assert len(original - source_now) < 2000 + 2000, "January's purge should have stopped early"

    rerun_client, rerun_store = SourceClient(url), open_store(f"s3://{s3_bucket}/archive", region="us-east-1")
    backfill(rerun_client, rerun_store).run()
    rerun_client.dispose()
    archive = archived_keys(store)
    assert source_keys(url) == set()
    assert len(archive) == len(set(archive)) and set(archive) == original


def _reads_january(queries: list[str]) -> Callable[[], bool]:
    """Whether the first slice of January's window has been sent (`record_slice_queries`)."""
    return lambda: any("updated_at >= '2023-01-01 00:00:00'" in query for query in queries)


def test_the_next_month_is_read_while_the_month_before_uploads_its_last_part(
    client: SourceClient, store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    january_reading = _reads_january(record_slice_queries(monkeypatch))
    december_puts: list[bool] = []

    def on_put(key: str, *_args: Any, **_kwargs: Any) -> None:
        if _is_month(key, "year=2022/month=12"):
            # December's 2,000 rows are two parts. The first is uploaded while December still reads
            # (January has not started); the last only after December's last row: by then January's
            # first slice is being read. Without the early read this wait would time out.
            last = len(december_puts) == 1
            december_puts.append(wait_for(january_reading, 15) if last else january_reading())

    wrap(store, "put_file", on_put)
    url = client.engine.url.render_as_string(hide_password=False)
    original = source_keys(url)

    reports = backfill(client, store).run()

    assert december_puts == [False, True]
    assert [r.rows_extracted for r in reports] == [2000, 2000, 2000]
    archive = archived_keys(store)
    assert len(archive) == len(set(archive)) and set(archive) == original and source_keys(url) == set()


def test_a_read_started_before_its_months_roll_forward_is_not_used(
    client: SourceClient, store: ObjectStore
) -> None:
    class Crash(Exception):
        """Stands in for SIGKILL right after the run marked its staging verified."""

    def crash_after_verify(message: str) -> None:
        if message.startswith("verified "):
            raise Crash(message)

    url = client.engine.url.render_as_string(hide_password=False)
    original = source_keys(url)
    december = MONTHS[:1]
    with pytest.raises(Crash):
        month_jobs(client, store, december, tables=TABLES, log=crash_after_verify)[0].run()
    assert source_keys(url) == original, "the crashed run died before its purge"

    rerun = month_jobs(client, store, december, tables=TABLES)[0]
    rerun.read_ahead()  # reads December's 2,000 rows, which rolling the crashed run forward purges
    report = rerun.run()

    assert len(report.recovered_runs) == 1
    # Read again after the roll-forward: nothing left in December. The early read would have staged
    # 2,000 rows that are gone from MySQL.
    assert report.rows_extracted == 0 and report.rows_kept_changed == 0
    assert report.committed_rows_in_partition == 2000, "the rolled-forward rows, counted once"
    archive = archived_keys(store)
    assert len(archive) == len(set(archive)) and len(archive) == 2000
    assert set(archive) | source_keys(url) == original and set(archive).isdisjoint(source_keys(url))


def test_a_failure_while_the_next_month_reads_ahead_leaves_no_reader_and_loses_nothing(
    client: SourceClient, store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    january_reading = _reads_january(record_slice_queries(monkeypatch))
    readers_before = slice_readers()
    december_puts = itertools.count()

    def on_put(key: str, *_args: Any, **_kwargs: Any) -> None:
        if _is_month(key, "year=2022/month=12") and next(december_puts) == 1:
            assert wait_for(january_reading, 15)
            raise StoreError("injected: the upload of December's last part failed")

    wrap(store, "put_file", on_put)
    url = client.engine.url.render_as_string(hide_password=False)
    original = source_keys(url)

    with pytest.raises(StoreError, match="injected"):
        backfill(client, store).run()

    # January's read was dropped with the run: its reader ends once the slice in flight is read.
    assert wait_for(lambda: not slice_readers() - readers_before, 15)
    assert source_keys(url) == original and archived_keys(store) == []

    rerun_client = SourceClient(url)
    backfill(rerun_client, store).run()
    rerun_client.dispose()
    archive = archived_keys(store)
    assert source_keys(url) == set() and len(archive) == len(set(archive)) and set(archive) == original


def test_log_lines_from_every_thread_are_written_by_one_writer_in_call_order() -> None:
    written: list[tuple[str, str]] = []

    def slow_sink(message: str) -> None:
        time.sleep(0.01)  # an event-log insert
        written.append((threading.current_thread().name, message))

    with LogRelay(slow_sink) as log:
        log("extracting January")
        worker = threading.Thread(target=lambda: log("purged December"), name="etl-purge-test")
        worker.start()
        worker.join()
        log("extracted January")
    # Leaving the block waited for every line; lines logged within the gathering window are one event.
    assert written == [("etl-log-writer", "extracting January\npurged December\nextracted January")]


def test_lines_apart_are_separate_events_and_a_flush_does_not_wait_for_the_window() -> None:
    written: list[str] = []
    with LogRelay(written.append, gather_seconds=0.05) as log:
        log("extracting January")
        time.sleep(0.5)
        # The window of the first line has closed: it is written without waiting for another line.
        assert written == ["extracting January"]
        log("extracted January")
        log("verified January")
    assert written == ["extracting January", "extracted January\nverified January"]

    patient: list[str] = []
    with LogRelay(patient.append, gather_seconds=60) as log:
        log("one")
        started = time.monotonic()
        assert log.flush(timeout=5)
        assert patient == ["one"] and time.monotonic() - started < 5
        log("two")
    assert patient == ["one", "two"]


def test_logging_a_line_does_not_wait_for_the_sink() -> None:
    gate = threading.Event()
    seen: list[tuple[bool, str]] = []
    # Were a call to write the line itself, the first call would block here for 5 s and record False.
    with LogRelay(lambda message: seen.append((gate.wait(5), message))) as log:
        log("one")
        log("two")
        gate.set()
    assert seen == [(True, "one\ntwo")]


def test_a_failing_log_sink_is_raised_when_the_block_ends_unless_the_block_failed() -> None:
    def broken(message: str) -> None:
        raise ConnectionError("event log storage is down")

    with pytest.raises(ConnectionError, match="storage is down"), LogRelay(broken) as log:
        log("a line")

    def failing_run() -> None:
        with LogRelay(broken) as log:
            log("a line")
            assert log.flush(timeout=5)  # the sink has failed by now
            raise ArchiveError("the run's own error")

    with pytest.raises(ArchiveError, match="the run's own error"):
        failing_run()


def test_lines_logged_before_a_failure_are_written_before_it_propagates() -> None:
    written: list[str] = []

    def slow_sink(message: str) -> None:
        time.sleep(0.05)
        written.append(message)

    def failing_run() -> None:
        with LogRelay(slow_sink) as log:
            log("extracted January")
            log("verification failed: part 1 is missing")
            raise ArchiveError("verification failed, nothing was deleted")

    with pytest.raises(ArchiveError):
        failing_run()
    assert written == ["extracted January\nverification failed: part 1 is missing"]


def test_outside_its_block_the_relay_writes_at_once() -> None:
    written: list[str] = []
    log = LogRelay(written.append)
    log("direct")
    assert written == ["direct"]


def test_sqlite_months_run_one_after_another(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'source.sqlite'}"
    execute_sql(url, "CREATE TABLE visits (id BIGINT PRIMARY KEY, updated_at DATETIME)")
    execute_sql(url, "INSERT INTO visits VALUES (:id, :t)",
                [{"id": i, "t": f"2022-12-{1 + i % 28:02d} 10:00:00" if i % 2 else f"2023-01-{1 + i % 28:02d} 08:30:00"}
                 for i in range(100)])  # fmt: skip
    client = SourceClient(url)
    store = open_store(str(tmp_path / "archive"), region="us-east-1")
    # A write killed half-way leaves its temporary file (the local store's unfinished upload).
    unfinished = tmp_path / "archive" / "visits" / "_staging" / "year=2022" / "month=12" / ".tmp-killed"
    unfinished.parent.mkdir(parents=True)
    unfinished.write_bytes(b"half a part")
    run = backfill(client, store)
    assert run.overlap is False
    reports = run.run()
    client.dispose()
    assert [r.rows_committed for r in reports] == [50, 50, 0]
    assert sum(r.rows_purged for r in reports) == 100
    assert not unfinished.exists()


def test_a_row_moved_between_two_verified_months_is_archived_once(
    client: SourceClient, store: ObjectStore
) -> None:
    # The state a backfill killed while purging December leaves when January was verified too, with a
    # row that moved from December to January between the two extractions: it is in both stagings.
    url = client.engine.url.render_as_string(hide_password=False)
    original = source_keys(url)
    december, january = month_jobs(client, store, MONTHS[:2], tables=TABLES)
    assert december.extract_and_verify() is not None
    moved = min(month_keys(url, MONTHS[0][1]))
    execute_sql(url, "UPDATE visits SET updated_at = '2023-01-15 12:00:00' WHERE id = :id", {"id": moved})
    assert january.extract_and_verify() is not None

    # The rerun starts at December: the stale copy (December's) must be finished before January's.
    rerun_client = SourceClient(url)
    backfill(rerun_client, store).run()
    rerun_client.dispose()
    archive = archived_keys(store)
    assert len(archive) == len(set(archive)), f"key {moved} was archived twice"
    assert set(archive) == original and source_keys(url) == set()
    january_parts = [m for m in committed(store) if m.partition == "2023-01-01"]
    assert sum(m.rows for m in january_parts) == 2001  # January's 2,000 rows and the moved one


def test_a_backfill_asks_the_source_for_its_load_at_most_twice_a_second(
    client: SourceClient, store: ObjectStore
) -> None:
    # Months of 2,000 rows in 250-row batches: 24 batches, each month's purge shorter than 0.5 s.
    asked: list[float] = []
    wrap(client, "threads_running", lambda: asked.append(time.monotonic()))
    reports = backfill(client, store).run()
    assert sum(r.rows_purged for r in reports) == 6000
    assert 1 <= len(asked) < 24, "asked before the first batch, then not before every batch"
    assert all(later - earlier >= 0.5 for earlier, later in itertools.pairwise(asked))
