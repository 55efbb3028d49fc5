"""Entry point: settings -> telemetry -> bootstrap -> serve until SIGTERM."""

from __future__ import annotations

from invoicing_common import telemetry_setup
from invoicing_common.lifecycle import run, use_event_loop
from invoicing_status.bootstrap import bootstrap
from invoicing_status.settings import StatusSettings


def main() -> None:
    settings = StatusSettings()
    use_event_loop(settings.event_loop)
    providers = telemetry_setup.configure(settings.otel_service_name, settings.metrics_port)
    status = bootstrap(settings)
    try:
        run(
            settings.otel_service_name,
            settings.log_level,
            [
                status.database,
                status.backfill,
                status.housekeeping,
                status.relay,
                status.notifier,
                status.cdar_rules,
                status.exchange_client,
                status.app,
                status.exchange,
                status.grpc,
                status.health,
            ],
            on_ready=status.grpc.mark_serving,
        )
    finally:
        telemetry_setup.shutdown(*providers)


if __name__ == "__main__":
    main()
