"""Where the archive keeps the bytes, and for how long (ingest and validate)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from invoicing_common.settings import read_secret_file


class ArchiveSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    # Archived files are kept at least this long (French law: 10 years).
    archive_retention_days: int = Field(default=3653, ge=1)
    # postgres: the bytes in the archive's chunk rows. s3: in an
    # S3-compatible object store, one object per chunk named by its hash;
    # PostgreSQL keeps the index (documents, chunk hashes, retention).
    archive_store: Literal["postgres", "s3"] = "postgres"
    # Empty: AWS's own endpoint for the region.
    archive_s3_endpoint_url: str = ""
    archive_s3_bucket: str = ""
    archive_s3_region: str = "us-east-1"
    # Keys are <prefix>chunks/<sha256>.
    archive_s3_prefix: str = ""
    # Empty: botocore's usual chain (environment, web identity, instance role).
    archive_s3_access_key_id: str = ""
    archive_s3_secret_access_key: SecretStr = SecretStr("")
    # Read at start when set; wins over archive_s3_secret_access_key.
    archive_s3_secret_access_key_file: Path | None = None

    @model_validator(mode="after")
    def _s3_complete(self) -> ArchiveSettings:
        if self.archive_s3_secret_access_key_file is not None:
            secret = read_secret_file(self.archive_s3_secret_access_key_file, "archive_s3_secret_access_key_file")
            object.__setattr__(self, "archive_s3_secret_access_key", SecretStr(secret))
        if self.archive_store == "s3" and not self.archive_s3_bucket:
            raise ValueError("archive_store s3 needs archive_s3_bucket")
        return self
