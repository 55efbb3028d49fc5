"""Entry point: settings -> telemetry -> bootstrap -> consume until SIGTERM."""

from __future__ import annotations

from invoicing_common import telemetry_setup
from invoicing_common.lifecycle import run, use_event_loop
from invoicing_validate.bootstrap import bootstrap
from invoicing_validate.settings import ValidateSettings


def main() -> None:
    settings = ValidateSettings()
    use_event_loop(settings.event_loop)
    providers = telemetry_setup.configure(settings.otel_service_name, settings.metrics_port)
    validate = bootstrap(settings)
    try:
        run(
            settings.otel_service_name,
            settings.log_level,
            # Stopped in reverse: gRPC first, then the streams (finishing
            # the documents in hand), then the worker processes.
            [validate.database, *validate.archive, validate.pool, validate.app, validate.grpc, validate.health],
            on_ready=validate.grpc.mark_serving,
        )
    finally:
        telemetry_setup.shutdown(*providers)


if __name__ == "__main__":
    main()
