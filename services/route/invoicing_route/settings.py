from __future__ import annotations

from pydantic import Field

from invoicing_common.settings import GrpcSettings


class RouteSettings(GrpcSettings):
    grpc_port: int = Field(default=17003, ge=0, le=65535)
    # Until the directory exists every valid invoice goes to this platform;
    # equal to platform_id means "made available here" (203), else 201.
    route_default_platform: str = Field(default="local", min_length=1)
    otel_service_name: str = "invoicing-route"
