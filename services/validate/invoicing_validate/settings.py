from __future__ import annotations

import os

from pydantic import Field

from invoicing_common.archive.settings import ArchiveSettings
from invoicing_common.settings import GrpcSettings


class ValidateSettings(GrpcSettings, ArchiveSettings):
    # Health/readiness endpoint only; validate has no public API.
    grpc_port: int = Field(default=17002, ge=0, le=65535)
    # Processes that run validation, off the event loop; default one per core.
    validate_workers: int = Field(default=os.cpu_count() or 1, ge=1, le=64)
    # Documents in flight in this instance; more than the workers, so that
    # documents wait together for the next free worker (see dispatch.py).
    validate_concurrency: int = Field(default=16, ge=1, le=1024)
    # Seconds one document may take before its worker is stopped; the
    # document is tried again (alone), then ends 501 INADMISSIBLE (IRR_SYNTAX).
    validate_time_limit_seconds: float = Field(default=30.0, gt=0, le=3600)
    # Tries per document when its worker dies or times out.
    validate_attempts: int = Field(default=2, ge=1, le=10)
    # A release of the French rules run beside the one each invoice gets,
    # to see what it would change before it is switched on (docs/reform.md).
    # Empty: none.
    validate_rules_shadow: str = ""
    otel_service_name: str = "invoicing-validate"
