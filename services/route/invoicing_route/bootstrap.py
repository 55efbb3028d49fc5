"""Composition root for the route service."""

from __future__ import annotations

from dataclasses import dataclass

import faust

from invoicing_common.grpc_server import GrpcServer
from invoicing_common.streams import create_app
from invoicing_route import agents
from invoicing_route.settings import RouteSettings


@dataclass
class Route:
    app: faust.App
    grpc: GrpcServer


def bootstrap(settings: RouteSettings) -> Route:
    app = create_app(settings.otel_service_name, settings)
    agents.register(app, settings)
    return Route(app=app, grpc=GrpcServer(settings, lambda _server: []))
