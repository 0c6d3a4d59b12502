"""16 MB values: LONGTEXT and MEDIUMBLOB rows through the archive round trip and the replica.

MariaDB's `max_allowed_packet` (16 MiB by default, and only settable globally) bounds what one
statement may carry. Reading is not bounded by it (the server streams rows of any size to the archive
and the replica), but restoring a row is one INSERT, in which PyMySQL sends binary values as hex (twice
their size): a row whose INSERT is larger than the server's limit cannot be put back until the limit
is raised. `etl-assets restore` checks every row
before inserting anything and names the table, partition, key, column, size and the setting to raise.

Values are compared by length and MD5 computed by each database, so a failure never prints 16 MB.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from etl_assets.cli import main
from etl_assets.config import load_config
from etl_assets.engine.archive import ArchiveJob
from etl_assets.lib.windows import Window
from etl_assets.resources.source import SourceClient
from etl_assets.resources.store import open_store
from etl_assets_tests.reliability import Reliability
from etl_assets_tests.support import execute_sql, replicate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

JAN_2023 = Window(datetime(2023, 1, 1, tzinfo=UTC), datetime(2023, 2, 1, tzinfo=UTC))
DDL = """
CREATE TABLE documents (
  id INT NOT NULL PRIMARY KEY, title VARCHAR(100) NULL, body LONGTEXT NULL, attachment MEDIUMBLOB NULL,
  updated_at DATETIME(6) NOT NULL, KEY ix_updated (updated_at)
) DEFAULT CHARSET=utf8mb4
"""
BIG_TEXT = 15_500_000  # bytes of UTF-8: escaped (about 5%) in its INSERT, just under the 16 MiB packet
BIG_BLOB = 7_500_000  # random bytes: PyMySQL sends binary as hex, so 15 MB of INSERT
FINGERPRINT = "SELECT id, title, LENGTH(body), MD5(body), LENGTH(attachment), MD5(attachment) FROM documents"
WORDS = [
    "visit",
    "follow-up",
    "rézumé",
    "患者",
    "😀",
    "naïve",
    "x-ray",
    "'quoted'",
    "back\\slash",
    "\t",
    "\n",
]


def _text(size: int, rng: random.Random) -> str:
    """About `size` bytes of UTF-8 with 2-, 3- and 4-byte characters, quotes and backslashes (cut to `size`)."""
    chunk = " ".join(rng.choice(WORDS) for _ in range(20_000)).encode("utf-8")
    data = (chunk * (size // len(chunk) + 1))[:size]
    return data.decode("utf-8", errors="ignore")


def _fingerprints(url: str, query: str = FINGERPRINT) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(query + " ORDER BY id"))]
    finally:
        engine.dispose()


def seed(url: str, *, oversize_row: bool) -> None:
    """A 15.5 MB text row, a 7.5 MB blob row, 40 small rows with NULLs; optionally a 16.5 MB row (id 3)."""
    rng = random.Random(16)
    execute_sql(url, DDL)
    insert = "INSERT INTO documents VALUES (:id, :title, :body, :attachment, :t)"
    stamp = datetime(2023, 1, 10, 8, 0)
    execute_sql(
        url,
        insert,
        {"id": 1, "title": "long text", "body": _text(BIG_TEXT, rng), "attachment": None, "t": stamp},
    )
    execute_sql(
        url,
        insert,
        {"id": 2, "title": "big blob", "body": "", "attachment": rng.randbytes(BIG_BLOB), "t": stamp},
    )
    execute_sql(url, insert, [{"id": i, "title": None if i % 2 else f"small {i}", "body": None if i % 3 else "ok",
                            "attachment": None if i % 5 else b"\x00\xff", "t": stamp} for i in range(10, 50)])  # fmt: skip
    if oversize_row:
        # Written in two statements, each under the packet limit; together 16.5 MB in one row.
        execute_sql(
            url,
            insert,
            {"id": 3, "title": "both", "body": _text(9_000_000, rng), "attachment": None, "t": stamp},
        )
        execute_sql(url, "UPDATE documents SET attachment = :a WHERE id = 3", {"a": rng.randbytes(BIG_BLOB)})


def write_config(path: Path, url: str, bucket: str, warehouse_url: str = "", schema: str = "") -> Path:
    text = f"source:\n  url: '{url}'\narchive:\n  url: 's3://{bucket}/archive'\n  region: us-east-1\n"
    if warehouse_url:
        text += f"warehouse:\n  url: '{warehouse_url}'\n  schema: {schema}\n"
    text += "tables:\n  - name: documents\n    archive: {retention: 1 year, batch_size: 10}\n"
    if warehouse_url:
        text += "    replica: {start: 2023-01-01, chunk_rows: 1000}\n"
    path.write_text(text, encoding="utf-8")
    return path


def archive_january(url: str, config: Path, bucket: str) -> int:
    table = load_config(config).table("documents")
    client = SourceClient(url)
    try:
        report = ArchiveJob(source=client, store=open_store(f"s3://{bucket}/archive", region="us-east-1"),
                            table=table, source_table=client.reflect("documents"), partition_key="2023-01-01",
                            window=JAN_2023, run_id=uuid.uuid4().hex, now=datetime.now(UTC),
                            log=lambda _m: None).run()  # fmt: skip
    finally:
        client.dispose()
    assert report.rows_extracted == report.rows_purged == report.rows_committed
    return report.rows_committed


def restore(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--config", str(config), "restore", "documents", "2023-01-01"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_16_mb_text_and_blob_rows_round_trip_through_archive_restore_and_replica(
    mysql_url: str,
    s3_bucket: str,
    pg_server_url: str,
    pg_schema: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    reliability: Reliability,
) -> None:
    seed(mysql_url, oversize_row=False)
    original = _fingerprints(mysql_url)
    assert original[0][2] > BIG_TEXT - 4 and original[1][4] == BIG_BLOB
    config = write_config(tmp_path / "etl_assets.yaml", mysql_url, s3_bucket, pg_server_url, pg_schema)

    # Replica into PostgreSQL: every value identical (PostgreSQL's md5 of text hashes its UTF-8 bytes).
    table = load_config(config).table("documents")
    replicate(mysql_url, pg_server_url, pg_schema, table, JAN_2023, run_id="r1")
    replica = _fingerprints(
        pg_server_url,
        f'SELECT id, title, octet_length(body), md5(body), octet_length(attachment), md5(attachment) FROM "{pg_schema}".documents',
    )
    assert replica == original

    # Archive: extract, Parquet, verify, purge; then restore puts back identical rows.
    assert archive_january(mysql_url, config, s3_bucket) == len(original)
    assert _fingerprints(mysql_url) == []
    code, out, err = restore(config, capsys)
    assert code == 0, err
    assert f"restored {len(original)} row(s)" in out
    restored = _fingerprints(mysql_url)
    assert restored == original
    reliability.checked(rows=2 * len(original), lost=len({r[0] for r in original} - {r[0] for r in restored}))


@pytest.fixture
def raised_packet_limit(mysql_server_url: str) -> Iterator[Any]:
    """A function that raises the server's global max_allowed_packet; the original is restored afterwards."""
    engine = sa.create_engine(mysql_server_url)
    with engine.connect() as conn:
        original = int(conn.exec_driver_sql("SELECT @@global.max_allowed_packet").scalar() or 0)

    def raise_to(size: int) -> None:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"SET GLOBAL max_allowed_packet = {int(size)}")

    try:
        yield raise_to
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"SET GLOBAL max_allowed_packet = {original}")
        engine.dispose()


def test_a_row_larger_than_max_allowed_packet_is_archived_and_restore_names_the_fix(
    mysql_url: str,
    s3_bucket: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    raised_packet_limit: Any,
    reliability: Reliability,
) -> None:
    seed(mysql_url, oversize_row=True)
    original = _fingerprints(mysql_url)
    limit = int(_fingerprints(mysql_url, "SELECT @@global.max_allowed_packet AS id")[0][0])
    big = next(r for r in original if r[0] == 3)
    assert big[2] + 2 * big[4] > limit, "row 3's INSERT (binary as hex) is larger than the packet limit"
    config = write_config(tmp_path / "etl_assets.yaml", mysql_url, s3_bucket)
    assert archive_january(mysql_url, config, s3_bucket) == len(original)

    code, _out, err = restore(config, capsys)
    assert code != 0
    assert "table 'documents' partition 2023-01-01: row {'id': 3} needs an INSERT of about" in err, err
    assert f"more than the source server's max_allowed_packet ({limit:,})" in err
    assert "SET GLOBAL max_allowed_packet = " in err and "nothing was restored" in err
    assert _fingerprints(mysql_url) == [], "nothing was inserted, not even the rows that would fit"

    # The fix the message names works, and the rows come back identical.
    raised_packet_limit(64 * 1024 * 1024)
    code, out, err = restore(config, capsys)
    assert code == 0, err
    assert f"restored {len(original)} row(s)" in out
    restored = _fingerprints(mysql_url)
    assert restored == original
    reliability.checked(rows=len(original), lost=len({r[0] for r in original} - {r[0] for r in restored}))
