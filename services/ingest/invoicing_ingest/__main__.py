"""Entry point: settings -> bootstrap -> serve until SIGTERM."""

from __future__ import annotations

from invoicing_common.lifecycle import run
from invoicing_ingest.bootstrap import bootstrap
from invoicing_ingest.settings import IngestSettings


def main() -> None:
    settings = IngestSettings()
    ingest = bootstrap(settings)
    run(
        settings.otel_service_name,
        settings.log_level,
        [ingest.database, ingest.kafka, ingest.grpc],
        on_ready=ingest.grpc.mark_serving,
    )


if __name__ == "__main__":
    main()
