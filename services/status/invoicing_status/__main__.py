"""Entry point: settings -> bootstrap -> serve until SIGTERM."""

from __future__ import annotations

from invoicing_common.lifecycle import run
from invoicing_status.bootstrap import bootstrap
from invoicing_status.settings import StatusSettings


def main() -> None:
    settings = StatusSettings()
    status = bootstrap(settings)
    run(
        settings.otel_service_name,
        settings.log_level,
        [status.database, status.kafka, status.publisher, status.notifier, status.grpc],
        app=status.app,
        on_ready=status.grpc.mark_serving,
    )


if __name__ == "__main__":
    main()
