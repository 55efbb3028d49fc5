"""Entry point: settings -> telemetry -> bootstrap -> consume and serve until SIGTERM."""

from __future__ import annotations

from invoicing_common import telemetry_setup
from invoicing_common.lifecycle import run, use_event_loop
from invoicing_route.bootstrap import bootstrap
from invoicing_route.settings import RouteSettings


def main() -> None:
    settings = RouteSettings()
    use_event_loop(settings.event_loop)
    providers = telemetry_setup.configure(settings.otel_service_name, settings.metrics_port)
    route = bootstrap(settings)
    try:
        run(
            settings.otel_service_name,
            settings.log_level,
            [
                route.database,
                *route.archive,
                route.relay,
                route.feed,
                route.app,
                route.delivery,
                route.grpc,
                route.health,
            ],
            on_ready=route.grpc.mark_serving,
        )
    finally:
        telemetry_setup.shutdown(*providers)


if __name__ == "__main__":
    main()
