"""Entry point: settings -> telemetry -> bootstrap -> serve until SIGTERM."""

from __future__ import annotations

from invoicing_common import telemetry_setup
from invoicing_common.lifecycle import run, use_event_loop
from invoicing_ingest.bootstrap import bootstrap
from invoicing_ingest.settings import IngestSettings


def main() -> None:
    settings = IngestSettings()
    use_event_loop(settings.event_loop)
    providers = telemetry_setup.configure(settings.otel_service_name, settings.metrics_port)
    ingest = bootstrap(settings)
    try:
        run(
            settings.otel_service_name,
            settings.log_level,
            [ingest.database, *ingest.archive, ingest.relay, ingest.grpc, ingest.health],
            on_ready=ingest.grpc.mark_serving,
        )
    finally:
        telemetry_setup.shutdown(*providers)


if __name__ == "__main__":
    main()
