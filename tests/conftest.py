"""Shared fixtures. Tests that need the stack read its endpoints from the
environment that `make test` (deploy/local/stack.py test) provides."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support import Stack, delete_created_accounts


@pytest.fixture(scope="session")
def memory_spans() -> InMemorySpanExporter:
    """The process's tracer provider, exporting to memory. A process has one
    global provider, so every test that inspects spans shares this one."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "invoicing-tests"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)
    return memory


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    yield Stack()
    # Accounts the tests made in the identity provider go with the session.
    delete_created_accounts()


@pytest.fixture
async def status_follower(stack: Stack) -> AsyncIterator[object]:
    """Positioned at the end of the status topic before the test acts."""
    from invoicectl.kafka_follow import StatusFollower

    follower = StatusFollower(stack.kafka)
    await follower.start()
    try:
        yield follower
    finally:
        await follower.stop()
