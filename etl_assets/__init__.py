"""etl-assets: archive old MySQL rows to encrypted S3 Parquet and keep a Redshift replica, on Dagster."""

import os as _os

__version__ = "0.1.0"

# Arrow picks its process-wide allocator once, when pyarrow is imported, and Parquet's readers and
# writers allocate their page and column buffers from it whatever pool the Python side is given.
# Its default (mimalloc) keeps what a month frees, so a long backfill's peak RSS grew with the size
# of a month (`make bench`: 400 MB at 2M rows against 320 MB with malloc). This package is imported
# before anything of ours imports pyarrow (Dagster does not), so it is the one place early enough to
# choose malloc; a pool the user names in the environment wins. `resources/memory.py` says more.
ARROW_POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"
"""Arrow reads it once, when pyarrow is imported, to choose the process-wide memory pool."""
_os.environ.setdefault(ARROW_POOL_VARIABLE, "system")
