"""Entry point: settings -> bootstrap -> consume until SIGTERM."""

from __future__ import annotations

from invoicing_common.lifecycle import run
from invoicing_validate.bootstrap import bootstrap
from invoicing_validate.settings import ValidateSettings


def main() -> None:
    settings = ValidateSettings()
    validate = bootstrap(settings)
    run(
        settings.otel_service_name,
        settings.log_level,
        [validate.pool, validate.grpc],
        app=validate.app,
        on_ready=validate.grpc.mark_serving,
    )


if __name__ == "__main__":
    main()
