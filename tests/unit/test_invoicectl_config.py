"""`invoicectl dlq replay` writes with its own Kafka principal when one is
configured, and says which variable is missing when half of one is."""

from __future__ import annotations

from pathlib import Path

import pytest

from invoicectl.config import replay_kafka_settings
from invoicing_common.auth.client import ConfigError


@pytest.fixture(autouse=True)
def _kafka_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    secret = tmp_path / "replayer"
    secret.write_text("replayer-secret\n")
    secret.chmod(0o600)
    for name in ("KAFKA_REPLAY_SASL_USERNAME", "KAFKA_REPLAY_SASL_PASSWORD_FILE", "KAFKA_SASL_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "operator")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "operator-secret")
    return secret


def test_replay_uses_the_replay_principal(monkeypatch: pytest.MonkeyPatch, _kafka_env: Path) -> None:
    monkeypatch.setenv("KAFKA_REPLAY_SASL_USERNAME", "replayer")
    monkeypatch.setenv("KAFKA_REPLAY_SASL_PASSWORD_FILE", str(_kafka_env))
    settings = replay_kafka_settings()
    assert settings.kafka_sasl_username == "replayer"
    assert settings.kafka_sasl_password.get_secret_value() == "replayer-secret"


def test_without_one_replay_uses_the_usual_principal() -> None:
    assert replay_kafka_settings().kafka_sasl_username == "operator"


def test_half_a_replay_principal_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_REPLAY_SASL_USERNAME", "replayer")
    with pytest.raises(ConfigError, match="KAFKA_REPLAY_SASL_PASSWORD_FILE"):
        replay_kafka_settings()
