"""The embedded demo's clinic database: realistic tables spanning three years up to today (SQLite).

Declared column types are MySQL's, so reflection, the type map and the contracts behave as they
would against RDS. Rows are generated deterministically (fixed seed) relative to "now": the same
`now` and seed give the same rows, so two demos on the same day report the same numbers.
"""

from __future__ import annotations

import random
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

VISITS = 200_000
AUDIT = 500_000
PATIENTS = 5_000
YEARS = 3

_DDL = [
    """CREATE TABLE patients (
        id BIGINT PRIMARY KEY, full_name VARCHAR(120) NOT NULL, birth_date DATE, email VARCHAR(255),
        updated_at DATETIME NOT NULL)""",
    """CREATE TABLE visits (
        id BIGINT PRIMARY KEY, patient_id BIGINT NOT NULL, status VARCHAR(16) NOT NULL, amount DECIMAL(12,2),
        notes VARCHAR(255), payload JSON, is_paid TINYINT(1) NOT NULL DEFAULT 0, created_at DATETIME NOT NULL,
        updated_at DATETIME)""",
    "CREATE INDEX idx_visits_updated_at ON visits (updated_at)",
    """CREATE TABLE audit_log (
        id BIGINT PRIMARY KEY, actor VARCHAR(64) NOT NULL, action VARCHAR(32) NOT NULL, entity VARCHAR(32) NOT NULL,
        entity_id BIGINT NOT NULL, logged_at DATETIME NOT NULL)""",
    "CREATE INDEX idx_audit_log_logged_at ON audit_log (logged_at)",
    """CREATE TABLE appointments_legacy (
        id BIGINT PRIMARY KEY, patient_id BIGINT, booked_for DATETIME, note TEXT)""",
]
_FIRST = [
    "Ada",
    "Grace",
    "Alan",
    "Maria",
    "Chen",
    "Amara",
    "Lucas",
    "Sofia",
    "Noor",
    "Jonas",
    "Élodie",
    "Kenji",
]
_LAST = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Garcia",
    "Wei",
    "Okafor",
    "Silva",
    "Rossi",
    "Haddad",
    "Berg",
    "Müller",
]
_NOTES = [
    None,
    "follow-up in 2 weeks",
    "bloodwork ordered",
    "patient reports improvement 😀",
    "referred",
    "no-show",
]
_ACTIONS = ["read", "update", "export", "print", "login"]


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


_PRIME = 2_147_483_647  # 2**31 - 1: every intermediate product below stays inside SQLite's 64-bit integers


def _row_hash(salt: int, seed: int) -> str:
    """SQL for a pseudo-random non-negative integer from the row number `i` (SQLite's random() has no seed)."""
    x = f"((i * 48271 + {salt * 7919 + seed}) % {_PRIME})"
    return f"((({x} * {x}) % {_PRIME} + {x} * 40503) % {_PRIME})"


def _seeded(sql: str, seed: int) -> str:
    """`sql` with each `abs(random())` replaced by its own deterministic per-row hash."""
    first, *rest = sql.split("abs(random())")
    return first + "".join(_row_hash(salt, seed) + part for salt, part in enumerate(rest, start=1))


def create_clinic(path: Path, *, now: datetime, scale: float = 1.0, seed: int = 2026) -> dict[str, int]:
    """Create the demo database at `path` (replacing it); returns rows per table."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    start = now - timedelta(days=365 * YEARS)
    span = (now - start).total_seconds()
    counts = {
        "patients": int(PATIENTS * scale),
        "visits": int(VISITS * scale),
        "audit_log": int(AUDIT * scale),
    }
    with sqlite3.connect(path) as db:
        for statement in _DDL:
            db.execute(statement)
        db.executemany(
            "INSERT INTO patients VALUES (?, ?, ?, ?, ?)",
            (
                (
                    i,
                    f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
                    f"{rng.randint(1930, 2020)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                    f"patient{i}@example.org",
                    _stamp(now - timedelta(seconds=rng.uniform(0, span))),
                )
                for i in range(1, counts["patients"] + 1)
            ),
        )

        # Visits and audit rows are generated inside SQLite (a recursive CTE), ten times faster than
        # binding 700k Python tuples: evenly spread over three years, some edited hours or days later.
        # Their "random" values are hashes of the row number and the seed, so they repeat exactly.
        db.execute("PRAGMA journal_mode=WAL")
        first, seconds = _stamp(start), span
        db.execute(
            _seeded(
                """
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
            INSERT INTO visits
            SELECT i, 1 + abs(random()) % ?, CASE abs(random()) % 4 WHEN 0 THEN 'scheduled' WHEN 3 THEN 'cancelled'
                   ELSE 'completed' END,
                   printf('%d.%02d', 20 + abs(random()) % 880, abs(random()) % 100),
                   CASE abs(random()) % 6 WHEN 0 THEN NULL WHEN 1 THEN 'follow-up in 2 weeks'
                        WHEN 2 THEN 'bloodwork ordered' WHEN 3 THEN 'patient reports improvement 😀'
                        WHEN 4 THEN 'referred' ELSE 'no-show' END,
                   json_object('bp', json_array(100 + abs(random()) % 50, 60 + abs(random()) % 35),
                               'room', 1 + abs(random()) % 40),
                   abs(random()) % 2,
                   datetime(?, '+' || CAST(? * i / ? AS INTEGER) || ' seconds'),
                   min(datetime(?, '+' || CAST(? * i / ? AS INTEGER) || ' seconds',
                                '+' || (CASE abs(random()) % 6 WHEN 3 THEN 2 WHEN 4 THEN 30 WHEN 5 THEN 216 ELSE 0 END)
                                || ' hours'), ?)
            FROM n
            """,
                seed,
            ),
            (
                counts["visits"],
                counts["patients"],
                first,
                seconds,
                counts["visits"],
                first,
                seconds,
                counts["visits"],
                _stamp(now),
            ),
        )
        db.execute(
            _seeded(
                """
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
            INSERT INTO audit_log
            SELECT i, 'user' || (1 + abs(random()) % 80),
                   CASE abs(random()) % 5 WHEN 0 THEN 'read' WHEN 1 THEN 'update' WHEN 2 THEN 'export'
                        WHEN 3 THEN 'print' ELSE 'login' END,
                   CASE abs(random()) % 2 WHEN 0 THEN 'visit' ELSE 'patient' END,
                   1 + abs(random()) % ?, datetime(?, '+' || CAST(? * i / ? AS INTEGER) || ' seconds')
            FROM n
            """,
                seed,
            ),
            (counts["audit_log"], counts["visits"], first, seconds, counts["audit_log"]),
        )
        db.executemany(
            "INSERT INTO appointments_legacy VALUES (?, ?, ?, ?)",
            (
                (i, rng.randint(1, 100), _stamp(start + timedelta(days=i)), "imported from the old system")
                for i in range(1, 500)
            ),
        )
    return counts
