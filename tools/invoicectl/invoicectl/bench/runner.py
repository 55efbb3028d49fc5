"""Submits bench documents over gRPC and follows them to their final status.

Two load shapes:

* closed loop: ``concurrency`` submitters, each sending its next document as
  soon as the previous one is acknowledged (throughput at that concurrency);
* open loop: one document every ``1 / rate`` seconds whatever the answers
  (latency under a given load). Latencies are measured from the *scheduled*
  send time, so a stalled server cannot hide its queueing delay
  (no coordinated omission).

The status topic is read with a group-less consumer (``StatusFollower``),
pinned to the end before the first submission, so no event is missed.
After the run, the validated and routed topics are read the same way for
the per-hop latencies (``hops``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import grpc
from invoicing.v1 import ingest_pb2, ingest_pb2_grpc

from invoicectl.bench.generator import BenchDocument
from invoicectl.bench.hops import InvoiceTimes, hop_latencies, stage_times
from invoicectl.bench.report import Latency, PipelineFigures, rate, steady_rate
from invoicectl.config import GRPC_OPTIONS, Endpoints, client_config
from invoicectl.kafka_follow import StatusFollower
from invoicing_common import topics
from invoicing_common.auth.client import secure_channel
from invoicing_status.lifecycle import PIPELINE_OUTCOMES, PLATFORM_REFUSALS

SUBMITTED = 200
FINAL_CODES = frozenset(s.value for s in PIPELINE_OUTCOMES)
# The platform refused the document: rejected (213) or inadmissible (501).
REFUSED = frozenset(s.value for s in PLATFORM_REFUSALS)
SUBMIT_TIMEOUT_SECONDS = 120.0
CONNECT_TIMEOUT_SECONDS = 10.0

Tick = Callable[[], None]
Metadata = tuple[tuple[str, str], ...]
# The call metadata that authenticates a document's submission (the bearer
# token of its seller's account).
Authorize = Callable[[BenchDocument], Metadata]


class Mode(StrEnum):
    CLOSED = "closed"
    OPEN = "open"


class BenchError(RuntimeError):
    """The bench cannot run (endpoint unreachable, bad arguments)."""


@dataclass
class Sent:
    document: BenchDocument
    # perf_counter seconds: scheduled send time (open loop) or actual (closed).
    start: float
    acked: float | None = None
    invoice_id: str = ""
    duplicate: bool = False
    error: str = ""


async def wait_ready(channel: grpc.aio.Channel, address: str) -> None:
    try:
        await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT_SECONDS)
    except TimeoutError:
        raise BenchError(f"cannot connect to {address} within {CONNECT_TIMEOUT_SECONDS:.0f}s") from None


# Answers an ERP retries, with the same idempotency key: the service was
# away (restarting, unreachable) or busy.
RETRIABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


class Submitter:
    """SubmitInvoice calls on one channel (HTTP/2 multiplexes them), each
    as the account of its document's seller. Each document carries an
    idempotency key; with ``retry_for`` > 0, a submission refused for a
    transient reason is sent again (same key) until acknowledged or the
    time is up, as an ERP integration would."""

    def __init__(
        self,
        stub: ingest_pb2_grpc.IngestServiceStub,
        authorize: Authorize,
        on_ack: Tick,
        *,
        run_id: str = "",
        retry_for: float = 0.0,
        on_id: Callable[[str], None] = lambda _id: None,
    ) -> None:
        self._stub = stub
        self._authorize = authorize
        self._on_ack = on_ack
        self._run_id = run_id
        self._retry_for = retry_for
        self._on_id = on_id
        self.retries = 0

    async def send(self, document: BenchDocument, start: float) -> Sent:
        sent = Sent(document, start)
        request = ingest_pb2.SubmitInvoiceRequest(
            document=document.data,
            filename=document.filename,
            idempotency_key=f"bench-{self._run_id}-{document.index}" if self._run_id else "",
        )
        give_up = time.perf_counter() + self._retry_for
        wait = 0.2
        while True:
            try:
                reply = await self._stub.SubmitInvoice(
                    request, metadata=self._authorize(document), timeout=SUBMIT_TIMEOUT_SECONDS
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() in RETRIABLE and time.perf_counter() + wait < give_up:
                    self.retries += 1
                    # Backing off, as a client should: not synchronisation.
                    await asyncio.sleep(wait)
                    wait = min(wait * 2, 2.0)
                    continue
                sent.error = exc.code().name
            else:
                sent.acked = time.perf_counter()
                sent.invoice_id = reply.invoice_id
                sent.duplicate = reply.duplicate
                self._on_id(reply.invoice_id)
            break
        self._on_ack()
        return sent

    async def closed_loop(self, documents: Iterable[BenchDocument], concurrency: int) -> list[Sent]:
        if concurrency < 1:
            raise BenchError("concurrency must be at least 1")
        pending = iter(documents)
        results: list[Sent] = []

        async def worker() -> None:
            # One shared iterator: each document is taken by exactly one worker.
            for document in pending:
                results.append(await self.send(document, time.perf_counter()))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results

    async def open_loop(self, documents: Sequence[BenchDocument], per_second: float) -> list[Sent]:
        if per_second <= 0:
            raise BenchError("rate must be positive")
        t0 = time.perf_counter()
        tasks: list[asyncio.Task[Sent]] = []
        for i, document in enumerate(documents):
            scheduled = t0 + i / per_second
            # Pacing, not synchronisation: this is what a fixed arrival rate is.
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.send(document, scheduled)))
        return list(await asyncio.gather(*tasks))


class FinalTracker:
    """Records, per invoice, the arrival time of its first final status, and
    when the pipeline says its 200 and its final status occurred."""

    def __init__(self, follower: StatusFollower, on_final: Tick) -> None:
        self._follower = follower
        self._on_final = on_final
        self.finals: dict[str, tuple[int, float]] = {}
        # Epoch seconds of each event's occurred_at: the status service's
        # clock, not the arrival here (which adds the status outbox's delay).
        self.submitted_at: dict[str, float] = {}
        self.final_at: dict[str, float] = {}
        self._wanted: set[str] = set()
        self._changed = asyncio.Event()

    def want(self, invoice_id: str) -> None:
        """Count ``invoice_id`` in the progress (its final may already be in)."""
        self._wanted.add(invoice_id)
        if invoice_id in self.finals:
            self._on_final()

    async def run(self) -> None:
        async for event in self._follower.events():
            occurred = event.occurred_at.ToMicroseconds() / 1e6 if event.HasField("occurred_at") else None
            if event.status_code == SUBMITTED and occurred is not None:
                self.submitted_at.setdefault(event.invoice_id, occurred)
            if event.status_code in FINAL_CODES and event.invoice_id not in self.finals:
                self.finals[event.invoice_id] = (event.status_code, time.perf_counter())
                if occurred is not None:
                    self.final_at[event.invoice_id] = occurred
                if event.invoice_id in self._wanted:
                    self._on_final()
                self._changed.set()

    async def wait_for(self, invoice_ids: set[str], idle_timeout: float) -> set[str]:
        """Return once every id has its final status, or when none arrived
        for ``idle_timeout`` seconds; returns the ids still without one."""
        while True:
            self._changed.clear()
            missing = invoice_ids - self.finals.keys()
            if not missing:
                return missing
            try:
                await asyncio.wait_for(self._changed.wait(), idle_timeout)
            except TimeoutError:
                return invoice_ids - self.finals.keys()


async def run_pipeline(
    endpoints: Endpoints,
    documents: Sequence[BenchDocument],
    *,
    mode: Mode,
    concurrency: int,
    per_second: float,
    authorize: Authorize,
    idle_timeout: float,
    on_ack: Tick,
    on_final: Tick,
    run_id: str = "",
    retry_for: float = 0.0,
    on_id: Callable[[str], None] = lambda _id: None,
    hops: bool = True,
    on_settled: Callable[[], None] = lambda: None,
) -> PipelineFigures:
    """Submit ``documents``, wait for their final statuses, and, with
    ``hops``, read the validated and routed topics afterwards (outside the
    measured window) for the per-hop latencies. ``on_settled`` is called
    the moment the phase ends: every invoice final, or the wait given up."""
    follower = StatusFollower(endpoints.kafka)
    try:
        await follower.start()
    except Exception as exc:
        raise BenchError(f"cannot follow the status topic on {endpoints.kafka.kafka_bootstrap_servers}: {exc}") from exc
    tracker = FinalTracker(follower, on_final)
    following = asyncio.create_task(tracker.run())

    try:
        # Tokens go per call (each seller's own), not as channel credentials.
        async with secure_channel(endpoints.ingest, None, client_config().ca_file, GRPC_OPTIONS) as channel:
            await wait_ready(channel, endpoints.ingest)
            client = Submitter(
                ingest_pb2_grpc.IngestServiceStub(channel),
                authorize,
                on_ack,
                run_id=run_id,
                retry_for=retry_for,
                on_id=on_id,
            )
            # Sent times are perf_counter(); this pair puts them on the wall
            # clock the pipeline's timestamps use.
            wall0, t0 = time.time(), time.perf_counter()
            if mode is Mode.CLOSED:
                sent = await client.closed_loop(documents, concurrency)
            else:
                sent = await client.open_loop(documents, per_second)
            submitted_at = time.perf_counter()
        ids = {s.invoice_id for s in sent if s.invoice_id}
        for invoice_id in ids:
            tracker.want(invoice_id)
        missing = await tracker.wait_for(ids, idle_timeout)
        on_settled()
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
        await follower.stop()
    result = figures(sent, tracker.finals, missing, t0, submitted_at, mode, concurrency, per_second)
    result.retried_submissions = client.retries
    if hops:
        stages, result.hops_unavailable = await stage_times(endpoints.kafka, ids, wall0)
        result.hops_ms = hop_latencies(
            invoice_times(
                sent,
                wall0 - t0,
                tracker.submitted_at,
                stages.get(topics.RECEIVED, {}),
                stages.get(topics.VALIDATED, {}),
                stages.get(topics.ROUTED, {}),
                tracker.final_at,
            )
        )
    return result


def invoice_times(
    sent: Iterable[Sent],
    wall_offset: float,
    submitted_at: dict[str, float],
    received_at: dict[str, float],
    validated_at: dict[str, float],
    routed_at: dict[str, float],
    final_at: dict[str, float],
) -> list[InvoiceTimes]:
    """The steps of each acknowledged invoice; ``wall_offset`` turns a sent
    time (perf_counter) into epoch seconds."""
    return [
        InvoiceTimes(
            submitted=s.start + wall_offset,
            status_200=submitted_at.get(s.invoice_id),
            received=received_at.get(s.invoice_id),
            validated=validated_at.get(s.invoice_id),
            routed=routed_at.get(s.invoice_id),
            final=final_at.get(s.invoice_id),
        )
        for s in sent
        if s.invoice_id
    ]


def figures(
    sent: Sequence[Sent],
    finals: dict[str, tuple[int, float]],
    missing: set[str],
    t0: float,
    submitted_at: float,
    mode: Mode,
    concurrency: int,
    per_second: float,
) -> PipelineFigures:
    ok = [s for s in sent if s.acked is not None]
    ours = [(s, finals[s.invoice_id]) for s in ok if s.invoice_id in finals]
    final_times = [t for _, (_, t) in ours]
    e2e_seconds = (max(final_times) - t0) if final_times else 0.0
    codes = Counter(str(code) for _, (code, _) in ours)
    return PipelineFigures(
        mode=mode.value,
        concurrency=concurrency,
        target_rate=per_second if mode is Mode.OPEN else None,
        count=len(sent),
        acked=len(ok),
        failed_submissions=dict(Counter(s.error for s in sent if s.error)),
        submit_seconds=round(submitted_at - t0, 3),
        submissions_per_s=rate(len(ok), submitted_at - t0),
        ack_latency_ms=Latency.of_seconds([s.acked - s.start for s in ok if s.acked is not None]),
        e2e_latency_ms=Latency.of_seconds([t - s.start for s, (_, t) in ours]),
        e2e_seconds=round(e2e_seconds, 3),
        e2e_invoices_per_s=rate(len(ours), e2e_seconds),
        e2e_invoices_per_s_steady=steady_rate(final_times),
        lost=len(missing),
        finals=dict(sorted(codes.items())),
        valid_rejected=sum(1 for s, (code, _) in ours if s.document.expect_valid and code in REFUSED),
        invalid_accepted=sum(1 for s, (code, _) in ours if not s.document.expect_valid and code not in REFUSED),
        lost_invoice_ids=sorted(missing)[:100],
    )
