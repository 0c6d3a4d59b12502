"""The drift gate every archive and replica run passes before it reads a single row.

The live schema is compared with the committed contract (`schemas/<t>.json`). On drift the run
refuses with the diff in the message, unless the table says `on_drift: evolve` and every change is an
additive column. Tables without a contract yet pass (with a note), so a new table can be snapshotted
after its first look.
"""

from __future__ import annotations

from etl_assets.config import ProjectConfig, TableConfig
from etl_assets.lib.contract import read_contract
from etl_assets.lib.schema import SourceTable
from etl_assets.lib.schema_diff import SchemaDiff, diff_schema


class DriftBlockedError(RuntimeError):
    """The live schema differs from the contract and the table's policy blocks the run."""

    def __init__(self, message: str, diff: SchemaDiff) -> None:
        super().__init__(message)
        self.diff = diff


def warehouse_dialect(config: ProjectConfig) -> str:
    """The type-map dialect of the configured warehouse (Redshift when none, the product's target)."""
    url = config.warehouse.url if config.warehouse else ""
    if url.startswith("duckdb"):
        return "duckdb"
    if url.startswith("postgresql"):
        return "postgresql"
    return "redshift"


def check_drift(*, config: ProjectConfig, table: TableConfig, live: SourceTable | None) -> SchemaDiff | None:
    """The diff between the contract and the live table, or None when there is no contract yet."""
    contract = read_contract(config.contract_path(table))
    if contract is None:
        return None
    replica = table.replica
    return diff_schema(
        contract,
        live,
        dialect=warehouse_dialect(config) if replica is not None else None,
        boolean_columns=replica.boolean_columns if replica else (),
        column_types=replica.column_types if replica else None,
    )


def ensure_no_drift(
    *, config: ProjectConfig, table: TableConfig, live: SourceTable, what: str
) -> SchemaDiff | None:
    """Raise `DriftBlockedError` when `what` (archive/replica) of `table` must not run.

    Returns:
        The diff (possibly additive changes an `evolve` policy lets through), or None without a contract.
    """
    diff = check_drift(config=config, table=table, live=live)
    if diff is None or not diff.blocks(table.on_drift):
        return diff
    path = config.contract_path(table)
    raise DriftBlockedError(
        f"{what} of '{table.name}' refused: the live schema differs from the contract {path}: {diff.summary}. "
        f"Nothing was read, written or deleted. If the change is intended, review it with "
        f"`etl-assets schema diff {table.name}`, then run `etl-assets schema snapshot {table.name}` and commit "
        f"the contract"
        + ("" if table.on_drift == "evolve" else " (or set on_drift: evolve to let added columns through)"),
        diff,
    )
