"""A committed partition whose objects no longer agree with its manifest, and damaged Parquet parts.

January 2023 is archived (and purged) for real into S3; then the committed area is tampered with the
way an operator's mistake or a bad copy would: the manifest's row count or key digest edited, a part
removed, an extra unlisted part added, a part truncated or corrupted in place. `etl-assets restore`
must refuse with a message naming the disagreement and insert nothing; re-running the archive of
the partition must refuse too, before extracting, and leave every committed object as it was.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa

from etl_assets.cli import main
from etl_assets.config import load_config
from etl_assets.engine.archive import ArchiveError, ArchiveJob, ArchiveReport
from etl_assets.lib.windows import Window
from etl_assets.resources.source import SourceClient
from etl_assets.resources.store import open_store
from etl_assets_tests.reliability import Reliability
from etl_assets_tests.support import seed_visits, source_keys

pytestmark = pytest.mark.integration

JAN_2023 = Window(datetime(2023, 1, 1, tzinfo=UTC), datetime(2023, 2, 1, tzinfo=UTC))
ROWS = 2400  # 3 parts of at most 1000 rows
FOLDER = "archive/visits/year=2023/month=01/"

Client = Any  # boto3's S3 client (untyped)


def _objects(s3: Client, bucket: str) -> dict[str, str]:
    """Key -> ETag of every object in the committed January folder (staging excluded)."""
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=FOLDER).get("Contents", [])
    return {o["Key"]: o["ETag"] for o in listed if "/_staging/" not in o["Key"]}


def _parts(s3: Client, bucket: str) -> list[str]:
    return sorted(k for k in _objects(s3, bucket) if k.endswith(".parquet"))


def _manifest_key(s3: Client, bucket: str) -> str:
    (key,) = [k for k in _objects(s3, bucket) if k.endswith(".manifest.json")]
    return key


def _edit_manifest(s3: Client, bucket: str, change: Callable[[dict[str, Any]], None]) -> None:
    key = _manifest_key(s3, bucket)
    document = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    change(document)
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(document).encode())


def _rewrite_part(
    s3: Client, bucket: str, change: Callable[[bytes], bytes], *, checksum: bool = True
) -> None:
    key = _parts(s3, bucket)[1]
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    extra = {"ChecksumAlgorithm": "SHA256"} if checksum else {}
    s3.put_object(Bucket=bucket, Key=key, Body=change(body), **extra)


def _flip_middle(body: bytes) -> bytes:
    middle = len(body) // 2
    return body[:middle] + bytes(b ^ 0xFF for b in body[middle : middle + 64]) + body[middle + 64 :]


def _wrong_digest(document: dict[str, Any]) -> None:
    count, total, xor = document["pk_digest"].split(":")
    document["pk_digest"] = f"{count}:{int(total, 16) ^ 1:016x}:{xor}"


TAMPERING: dict[str, tuple[Callable[[Client, str], None], str]] = {
    "manifest-row-count": (
        lambda s3, b: _edit_manifest(s3, b, lambda d: d.update(rows=d["rows"] - 1)),
        rf"says {ROWS - 1:,} rows, its parts list {ROWS:,}",
    ),
    "manifest-digest": (
        lambda s3, b: _edit_manifest(s3, b, _wrong_digest),
        r"has key digest .*, its parts add up to",
    ),
    "part-removed": (
        lambda s3, b: s3.delete_object(Bucket=b, Key=_parts(s3, b)[0]),
        r"part s3://.*-0\.parquet of run \w+ is missing",
    ),
    "extra-unlisted-part": (
        lambda s3, b: s3.copy_object(
            Bucket=b, Key=f"{FOLDER}{uuid.uuid4().hex}-0.parquet", CopySource={"Bucket": b, "Key": _parts(s3, b)[0]}
        ),
        r"\.parquet is in the queryable folder but in no committed manifest",
    ),
    "part-truncated": (
        lambda s3, b: _rewrite_part(s3, b, lambda body: body[: len(body) // 2]),
        r"-1\.parquet has [\d,]+ bytes, its manifest says [\d,]+",
    ),
    "part-corrupted-same-size": (
        lambda s3, b: _rewrite_part(s3, b, _flip_middle),
        r"-1\.parquet has another SHA-256 than its manifest records",
    ),
    # Without a stored checksum only reading the part shows the damage: restore does, a re-run does not
    # read committed parts (it adds a new run beside them and leaves them as they are).
    "part-corrupted-no-checksum": (
        lambda s3, b: _rewrite_part(s3, b, _flip_middle, checksum=False),
        r"-1\.parquet (is not readable Parquet|does not match manifest)",
    ),
}  # fmt: skip


def _archive(url: str, config_path: Path, bucket: str) -> ArchiveReport:
    table = load_config(config_path).table("visits")
    client = SourceClient(url)
    try:
        return ArchiveJob(source=client, store=open_store(f"s3://{bucket}/archive", region="us-east-1"), table=table,
                          source_table=client.reflect("visits"), partition_key="2023-01-01", window=JAN_2023,
                          run_id=uuid.uuid4().hex, now=datetime.now(UTC), log=lambda _m: None).run()  # fmt: skip
    finally:
        client.dispose()


def _january_in_source(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT COUNT(*) FROM visits WHERE updated_at >= '2023-01-01' "
                                            "AND updated_at < '2023-02-01'")).scalar() or 0)  # fmt: skip
    finally:
        engine.dispose()


@pytest.mark.parametrize("tampering", list(TAMPERING))
def test_a_tampered_committed_partition_is_refused_by_restore_and_by_a_rerun(
    tampering: str,
    mysql_url: str,
    s3_bucket: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    reliability: Reliability,
) -> None:
    monkeypatch.chdir(tmp_path)
    seed_visits(mysql_url, months=[(2023, 1), (2023, 2)], rows_per_month=ROWS)
    original = source_keys(mysql_url)
    config = tmp_path / "etl_assets.yaml"
    config.write_text(
        f"source:\n  url: '{mysql_url}'\narchive:\n  url: 's3://{s3_bucket}/archive'\n  region: us-east-1\n"
        "tables:\n  - name: visits\n    archive: {retention: 1 year, part_rows: 1000, chunk_rows: 500}\n",
        encoding="utf-8",
    )
    assert _archive(mysql_url, config, s3_bucket).rows_committed == ROWS
    s3 = boto3.client("s3", region_name="us-east-1")
    assert len(_parts(s3, s3_bucket)) == 3
    tamper, problem = TAMPERING[tampering]
    tamper(s3, s3_bucket)
    tampered = _objects(s3, s3_bucket)

    # restore refuses and inserts nothing
    capsys.readouterr()
    code = main(["--config", str(config), "restore", "visits", "2023-01-01"])
    err = capsys.readouterr().err
    assert code != 0
    assert re.search(problem, err), err
    read_only = tampering == "part-corrupted-no-checksum"
    assert (
        "nothing was restored" if read_only else "the committed archive does not match its manifest(s)"
    ) in err
    assert "hint: fix what the message names and run restore again" in err
    assert _january_in_source(mysql_url) == 0, "restore inserted nothing"

    # a re-run of the partition (with new January rows to archive) refuses before extracting anything
    engine = sa.create_engine(mysql_url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO visits (patient_id, status, created_at, updated_at) "
                             "VALUES (1, 'completed', '2023-01-14', '2023-01-15 10:00:00')"))  # fmt: skip
    engine.dispose()
    if read_only:
        assert _archive(mysql_url, config, s3_bucket).rows_committed == 1
        after = _objects(s3, s3_bucket)
        assert {k: after[k] for k in tampered} == tampered, "the committed objects were not overwritten"
        assert len(after) == len(tampered) + 2, "one new part and its manifest beside them"
    else:
        with pytest.raises(ArchiveError, match=problem):
            _archive(mysql_url, config, s3_bucket)
        assert _objects(s3, s3_bucket) == tampered, (
            "the committed partition was neither overwritten nor emptied"
        )
        assert _january_in_source(mysql_url) == 1, "the new January row is still in the source"
    assert not s3.list_objects_v2(Bucket=s3_bucket, Prefix=f"{FOLDER}_staging/").get("Contents")
    february = len(source_keys(mysql_url)) - _january_in_source(mysql_url)
    reliability.checked(rows=len(original), lost=len(original) - ROWS - february)
