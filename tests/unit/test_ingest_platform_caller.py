"""Another platform submitting: a registered platform account submits
without SIRENs and its invoices carry its id (origin_platform); an account
with the platform role that the registry does not name is refused, without
learning which platforms are known; the policy admits the platform role to
the submit methods, not to downloads."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from invoicing_common.auth.principal import ROLE_BUYER, ROLE_OPERATOR, ROLE_PLATFORM, ROLE_SUPPLIER, Principal
from invoicing_common.platforms import Peer, Registry
from invoicing_ingest.api import ACCESS_POLICY
from invoicing_ingest.domain import (
    UnregisteredPlatform,
    check_submission,
    new_receipt,
    received_event,
    submitting_platform,
)

REGISTRY = Registry(
    {
        "peer": Peer(
            id="peer",
            ingest="127.0.0.1:17011",
            exchange="127.0.0.1:17014",
            token_url="https://issuer/token",
            client_id="platform-local",
            client_secret_file="/secret",
            caller_client_id="platform-peer",
        )
    }
)


def _caller(client_id: str, *roles: str, sirens: frozenset[str] = frozenset()) -> Principal:
    return Principal(f"sub-{client_id}", client_id, frozenset(roles), sirens, expires_at=0.0)


def test_a_registered_platform_submits_as_itself_without_sirens() -> None:
    caller = _caller("platform-peer", ROLE_PLATFORM)
    origin = submitting_platform(caller, REGISTRY)
    assert origin == "peer"
    submission = check_submission(b"<Invoice/>", "f.xml", "inv-on-peer", caller.subject, 100, caller.sirens, origin)
    event = received_event(submission, new_receipt(datetime.now(UTC)), "")
    assert event.invoice.origin_platform == "peer"
    assert list(event.submitter_sirens) == [] and event.idempotency_key == "inv-on-peer"


def test_a_sellers_account_has_no_origin_platform() -> None:
    caller = _caller("erp", ROLE_SUPPLIER, sirens=frozenset({"842109373"}))
    assert submitting_platform(caller, REGISTRY) == ""
    # Even when its client id were a platform's: the role makes the platform.
    assert submitting_platform(_caller("platform-peer", ROLE_SUPPLIER), REGISTRY) == ""
    submission = check_submission(b"<Invoice/>", "f.xml", "", caller.subject, 100, caller.sirens)
    assert received_event(submission, new_receipt(datetime.now(UTC)), "").invoice.origin_platform == ""


@pytest.mark.parametrize(
    "caller",
    [
        pytest.param(_caller("platform-other", ROLE_PLATFORM), id="unknown-client"),
        # Our own account at the peer (client_id), not the one it calls us with.
        pytest.param(_caller("platform-local", ROLE_PLATFORM), id="the-account-we-use-there"),
        pytest.param(_caller("", ROLE_PLATFORM), id="no-client-id"),
        pytest.param(_caller("platform-other", ROLE_PLATFORM, ROLE_SUPPLIER), id="also-a-supplier"),
    ],
)
def test_an_unregistered_platform_is_refused_without_learning_the_registry(caller: Principal) -> None:
    with pytest.raises(UnregisteredPlatform) as refused:
        submitting_platform(caller, REGISTRY)
    message = str(refused.value)
    assert "not registered" in message
    assert not any(word in message for word in ("peer", "platform-peer", "platform-local", "17011", "issuer"))


def test_an_empty_registry_admits_no_platform() -> None:
    with pytest.raises(UnregisteredPlatform):
        submitting_platform(_caller("platform-peer", ROLE_PLATFORM), Registry({}))


def test_the_platform_role_may_submit_but_not_download() -> None:
    submit = {name: roles for name, roles in ACCESS_POLICY.items() if "/invoicing.v1.IngestService/" in name}
    assert set(submit) == {
        "/invoicing.v1.IngestService/SubmitInvoice",
        "/invoicing.v1.IngestService/SubmitInvoices",
        "/invoicing.v1.IngestService/UploadInvoice",
    }
    assert all(roles == {ROLE_SUPPLIER, ROLE_PLATFORM} for roles in submit.values())
    downloads = ACCESS_POLICY["/invoicing.v1.DocumentService/GetInvoiceDocument"]
    assert downloads == {ROLE_SUPPLIER, ROLE_BUYER, ROLE_OPERATOR}
