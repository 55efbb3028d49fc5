"""The faust apps use our transport, whose consumers wait for a batch."""

from __future__ import annotations

from invoicing_common.settings import ServiceSettings
from invoicing_common.streams import create_app
from invoicing_common.transport import Transport


async def test_worker_consumers_get_the_fetch_settings() -> None:
    settings = ServiceSettings(kafka_fetch_min_bytes=12345, kafka_fetch_max_wait_ms=77)
    app = create_app("invoicing-transport-test", settings)
    assert isinstance(app.transport, Transport)
    # The aiokafka consumer faust's consumer thread would start (not started
    # here: nothing connects).
    consumer = app.consumer._thread._create_worker_consumer(app.transport)  # type: ignore[attr-defined]
    assert (consumer._fetch_min_bytes, consumer._fetch_max_wait_ms) == (12345, 77)


def test_defaults_batch_fetches() -> None:
    settings = ServiceSettings()
    assert settings.kafka_fetch_min_bytes > 1
    assert settings.kafka_fetch_max_wait_ms <= 100  # bounded added latency per hop
