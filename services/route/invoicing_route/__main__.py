"""Entry point: settings -> bootstrap -> consume until SIGTERM."""

from __future__ import annotations

from invoicing_common.lifecycle import run
from invoicing_route.bootstrap import bootstrap
from invoicing_route.settings import RouteSettings


def main() -> None:
    settings = RouteSettings()
    route = bootstrap(settings)
    run(settings.otel_service_name, settings.log_level, [route.grpc], app=route.app, on_ready=route.grpc.mark_serving)


if __name__ == "__main__":
    main()
