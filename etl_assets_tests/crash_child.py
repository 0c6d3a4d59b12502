"""A child process that runs one archive partition and parks itself at a named point to be killed.

Used by the crash tests: the parent reads stdout until it sees `PARKED <point>`, then SIGKILLs this
process, exactly as a crashed worker or an OOM kill would end it. The hooks live here, in test code;
the product has none.

    python -m etl_assets_tests.crash_child MYSQL_URL BUCKET POINT[@N] [backfill] [wide]

`POINT@N` parks at the N-th time the point is reached (default: the point's own count). With
`backfill`, the child archives December 2022 to February 2023 as one `ArchiveBackfill`, which purges
each month in a helper thread while the next one is extracted: a point reached in either thread
parks that thread while the other goes on, until the kill.

With `wide`, the child uploads files of 5 MiB or more (S3's minimum part size) as multipart uploads
of 5 MiB parts and makes one staged part of the whole month, so that a month of wide rows goes up in
parts. `mid_upload` parks the transfer thread that has just stored such a part: the upload is
created and holds a part, and it cannot complete before the kill.
"""

from __future__ import annotations

import itertools
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from etl_assets.engine.archive import ArchiveBackfill, ArchiveJob
from etl_assets.lib.windows import Window
from etl_assets.resources.source import SourceClient
from etl_assets.resources.store import ObjectStore, S3Store, open_store
from etl_assets_tests.support import config_for

TABLES = """
  - name: visits
    archive: {retention: 1 year, batch_size: 200, part_rows: 1000, chunk_rows: 500, max_threads_running: 500}
"""
# One staged part for the month (part_rows above the rows a test seeds), wide enough to go up in parts.
WIDE_TABLES = """
  - name: visits
    archive: {retention: 1 year, batch_size: 1000, part_rows: 100000, chunk_rows: 1000, max_threads_running: 500}
"""
WIDE_MULTIPART_BYTES = 5 * 1024 * 1024
WINDOW = Window(datetime(2023, 1, 1, tzinfo=UTC), datetime(2023, 2, 1, tzinfo=UTC))
BACKFILL_MONTHS = [
    ("2022-12-01", Window(datetime(2022, 12, 1, tzinfo=UTC), datetime(2023, 1, 1, tzinfo=UTC))),
    ("2023-01-01", WINDOW),
    ("2023-02-01", Window(datetime(2023, 2, 1, tzinfo=UTC), datetime(2023, 3, 1, tzinfo=UTC))),
]


def month_jobs(
    client: SourceClient,
    store: ObjectStore,
    months: list[tuple[str, Window]],
    *,
    log: Callable[[str], None] = lambda message: None,
    tables: str = TABLES,
) -> list[ArchiveJob]:
    """One `ArchiveJob` per month of `visits`, all of one run (the archive URL is the store's)."""
    config = config_for(
        source_url="mysql+pymysql://unused/db", archive_url="s3://unused/archive", tables=tables
    )
    source_table = client.reflect("visits")
    run_id = uuid.uuid4().hex
    return [
        ArchiveJob(
            source=client,
            store=store,
            table=config.tables[0],
            source_table=source_table,
            partition_key=key,
            window=window,
            run_id=run_id,
            now=datetime.now(UTC),
            log=log,
        )
        for key, window in months
    ]


def open_child_store(bucket: str, *, wide: bool = False) -> S3Store:
    """The store the child archives to; `wide` makes a file of 5 MiB or more a multipart upload."""
    sizes = {"multipart_threshold_bytes": WIDE_MULTIPART_BYTES, "multipart_chunk_bytes": WIDE_MULTIPART_BYTES}
    store = open_store(f"s3://{bucket}/archive", region="us-east-1", **(sizes if wide else {}))
    assert isinstance(store, S3Store)
    return store


def park(point: str) -> None:
    print(f"PARKED {point}", flush=True)
    time.sleep(600)


def main() -> None:
    url, bucket, point = sys.argv[1:4]
    backfill, wide = "backfill" in sys.argv[4:], "wide" in sys.argv[4:]
    point, _, nth = point.partition("@")
    store = open_child_store(bucket, wide=wide)
    client = SourceClient(url)
    counts: dict[str, int] = {}

    def after(name: str, target: Any, method: str, when: int, condition: Any = None) -> None:
        original = getattr(target, method)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            if condition is None or condition(*args, **kwargs):
                counts[name] = counts.get(name, 0) + 1
                if point == name and counts[name] == (int(nth) if nth else when):
                    park(point)
            return result

        setattr(target, method, wrapped)

    after("mid_extract", store, "put_file", 1, lambda key, *a, **k: "/_staging/" in key)
    after("mid_purge", client, "delete_unchanged", 3)
    after("mid_commit", store, "copy", 1)
    after("before_cleanup", store, "put_bytes", 1, lambda key, *a, **k: "/_staging/" not in key)

    uploaded_parts = itertools.count(1)

    def after_upload_part(**kwargs: Any) -> None:
        # Called in the transfer's worker thread once S3 stored a part: while it is parked, the
        # transfer cannot complete the upload, so the kill leaves it unfinished.
        if point == "mid_upload" and next(uploaded_parts) == (int(nth) if nth else 1):
            park(point)

    store.client.meta.events.register("after-call.s3.UploadPart", after_upload_part)

    def log(message: str) -> None:
        print(message, flush=True)
        if point == "before_verify" and message.startswith("extracted"):
            park(point)
        if point == "after_verify" and message.startswith("verified"):
            park(point)

    tables = WIDE_TABLES if wide else TABLES
    if backfill:
        jobs = month_jobs(client, store, BACKFILL_MONTHS, log=log, tables=tables)
        reports = ArchiveBackfill(jobs=jobs).run()
        print(f"DONE {sum(r.rows_committed for r in reports)}", flush=True)
    else:
        report = month_jobs(client, store, [("2023-01-01", WINDOW)], log=log, tables=tables)[0].run()
        print(f"DONE {report.rows_committed}", flush=True)


if __name__ == "__main__":
    main()
