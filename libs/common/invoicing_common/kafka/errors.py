"""Which failures are worth waiting out, and which never go away.

A record whose handling fails for a *transient* reason (a broker or the
database away, a rebalance, a timeout) is retried in place with a bounded
backoff: skipping it would lose it, and the fault will pass. Anything else
is *permanent* for that record: it goes to the DLQ with the reason, and the
partition moves on. Kafka's own errors say which they are (``retriable``);
a few that aiokafka marks non-retriable are still conditions of the
cluster, not of the record, and are waited out too.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import asyncpg  # type: ignore[import-untyped]
from aiokafka import errors as kafka_errors  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError

log = logging.getLogger(__name__)
T = TypeVar("T")


class PermanentError(Exception):
    """The record can never be processed; it goes to the DLQ."""


class Fault(enum.Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"


# Kafka errors aiokafka does not mark retriable that are still a state of
# the cluster or of our access to it, never of one record: wait them out
# (an operator fixes an ACL; a broker comes back; a rebalance ends).
_KAFKA_HOLD: tuple[type[BaseException], ...] = (
    kafka_errors.KafkaTimeoutError,
    kafka_errors.KafkaUnavailableError,
    kafka_errors.BrokerNotAvailableError,
    kafka_errors.ReplicaNotAvailableError,
    kafka_errors.RebalanceInProgressError,
    kafka_errors.CommitFailedError,
    kafka_errors.IllegalGenerationError,
    kafka_errors.UnknownMemberIdError,
    kafka_errors.ProducerClosed,
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.GroupAuthorizationFailedError,
    kafka_errors.ClusterAuthorizationFailedError,
    kafka_errors.SaslAuthenticationFailed,
    kafka_errors.AuthenticationFailedError,
    kafka_errors.OutOfOrderSequenceNumber,
    kafka_errors.UnknownProducerId,
)

# PostgreSQL conditions that pass: the server restarting (class 57), the
# connection lost (08), resources short (53), a transaction that lost a
# race (40: serialization failure, deadlock); and asyncpg's client-side
# errors of a connection the server cut ("connection is closed", a
# protocol state broken mid-operation), which a new connection cures.
_DATABASE_TRANSIENT: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.TooManyConnectionsError,
)

# OSErrors about local files are bugs or configuration, not network faults.
_LOCAL_OS_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)

# Kept for callers outside the stream runtime (gRPC handlers answering
# UNAVAILABLE, background services that restart): exception classes for an
# ``except`` clause. ``classify`` is the finer, instance-level decision.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    kafka_errors.KafkaError,
    *_DATABASE_TRANSIENT,
)


def classify(exc: BaseException) -> Fault:
    """TRANSIENT when waiting can fix it, PERMANENT when the record is at fault."""
    if isinstance(exc, (PermanentError, DecodeError, UnicodeDecodeError)):
        return Fault.PERMANENT
    if isinstance(exc, kafka_errors.KafkaError):
        if exc.retriable or isinstance(exc, _KAFKA_HOLD):
            return Fault.TRANSIENT
        # Record too large, invalid or corrupt message, and whatever else
        # Kafka says will fail again: retrying would stall the partition.
        return Fault.PERMANENT
    if isinstance(exc, _DATABASE_TRANSIENT):
        return Fault.TRANSIENT
    if isinstance(exc, asyncio.TimeoutError):  # also asyncpg's command_timeout
        return Fault.TRANSIENT
    if isinstance(exc, OSError) and not isinstance(exc, _LOCAL_OS_ERRORS):
        return Fault.TRANSIENT
    return Fault.PERMANENT


def is_transient(exc: BaseException) -> bool:
    return classify(exc) is Fault.TRANSIENT


def backoff_delays(first: float, cap: float) -> Iterator[float]:
    """The waits between attempts that never give up: ``first``, doubling,
    then ``cap`` for ever."""
    delay = first
    while True:
        yield min(delay, cap)
        delay = min(delay * 2, cap)


class Backoff:
    """Exponential waits from ``first`` up to ``cap`` seconds."""

    def __init__(self, first: float = 0.5, cap: float = 10.0) -> None:
        self._next = first
        self._cap = cap

    async def wait(self) -> None:
        await asyncio.sleep(self._next)
        self._next = min(self._cap, max(self._next * 2, 0.0))

    @property
    def next_delay(self) -> float:
        return self._next


async def retry_transient(operation: Callable[[], Awaitable[T]], what: str, retry_delay: float = 0.5) -> T:
    """Run ``operation`` until it succeeds or fails for a permanent reason
    (raised): a broker or database outage holds, never skips."""
    backoff = Backoff(retry_delay)
    while True:
        try:
            return await operation()
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("transient failure in %s, retrying in %.1fs: %r", what, backoff.next_delay, exc)
            await backoff.wait()
