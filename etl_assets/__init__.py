"""etl-assets: archive old MySQL rows to encrypted S3 Parquet and keep a Redshift replica, on Dagster."""

__version__ = "0.1.0"
