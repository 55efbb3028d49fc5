"""The gRPC server's gate: bearer token, role, rate and stream quotas, default deadline.

Every check runs inside the wrapped handler, in the RPC's own task, so the
Principal bound there (a ContextVar) is what the handler and the code it
calls see. Refusals say what the caller can fix and nothing more: why a
token was refused goes to the ``invoicing.auth.refusals`` metric, never to
the caller, and the token itself goes nowhere.

A call is charged one rate-limit token, and a client stream one more per
request message after the first. A response stream ends when the token that
opened it expires (plus the verifier's leeway), so an account that was
deleted or lost a role stops receiving within one token lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, NoReturn

import grpc
from opentelemetry import metrics, trace

from invoicing_common.auth.principal import Principal, bind_principal, reset_principal
from invoicing_common.auth.quotas import RateLimiter, StreamLimiter
from invoicing_common.auth.tokens import InvalidToken, TokenVerifier
from invoicing_common.grpc_handlers import responses

log = logging.getLogger(__name__)

# Health checks come from load balancers and kubelets, reflection from
# tools such as grpcurl: neither carries a token, and neither reveals data.
PUBLIC_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

REFUSALS = metrics.get_meter("invoicing").create_counter(
    "invoicing.auth.refusals",
    unit="{call}",
    description="Calls refused at the gate (token, role, quota, default deadline), by reason",
)

_WWW_AUTHENTICATE = (("www-authenticate", 'Bearer realm="invoicing"'),)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        verifier: TokenVerifier,
        policy: Mapping[str, frozenset[str]],
        limiter: RateLimiter,
        streams: StreamLimiter,
        limited_streams: frozenset[str] = frozenset(),
        default_deadline_seconds: float | None = None,
        clock: Callable[[], float] = time.time,
        stream_grace_seconds: float = 0.0,
    ) -> None:
        """``policy`` maps each full method name to the roles of which the
        caller needs one; an empty set admits any authenticated account. A
        method missing from it is refused to everyone (fail closed).
        ``limited_streams`` are the methods counted against ``streams``, of
        any kind: the slot is held for the whole call.
        ``default_deadline_seconds`` bounds unary-response calls whose client
        set no deadline. ``clock`` is the wall clock token expiry is read
        against (epoch seconds)."""
        self._verifier = verifier
        self._policy = dict(policy)
        self._limiter = limiter
        self._streams = streams
        self._limited_streams = limited_streams
        self._default_deadline = default_deadline_seconds
        # Response streams end this long after their token's expiry (plus
        # leeway) unless their handler ended them first.
        self._stream_grace = stream_grace_seconds
        self._clock = clock
        self._reported_without_policy: set[str] = set()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        if method.startswith(PUBLIC_METHOD_PREFIXES):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            # Unknown method: gRPC answers UNIMPLEMENTED, as without us.
            return None
        return self._wrap(method, handler)

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        deserialize, serialize = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async with self._admitted(method, context):
                    return await self._within_default_deadline(context, lambda: inner_uu(request, context))

            return grpc.unary_unary_rpc_method_handler(unary_unary, deserialize, serialize)
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                async with self._admitted(method, context) as principal:
                    charged = self._charged(requests, principal, context)
                    return await self._within_default_deadline(context, lambda: inner_su(charged, context))

            return grpc.stream_unary_rpc_method_handler(stream_unary, deserialize, serialize)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async with self._admitted(method, context) as principal:
                    items = responses(inner_us(request, context))
                    async for item in self._until_token_expiry(items, principal, context):
                        yield item

            return grpc.unary_stream_rpc_method_handler(unary_stream, deserialize, serialize)
        if handler.stream_stream is not None:
            inner_ss = handler.stream_stream

            async def stream_stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async with self._admitted(method, context) as principal:
                    items = responses(inner_ss(self._charged(requests, principal, context), context))
                    async for item in self._until_token_expiry(items, principal, context):
                        yield item

            return grpc.stream_stream_rpc_method_handler(stream_stream, deserialize, serialize)
        # Passing an unknown kind through unchecked would open it to anyone.
        raise TypeError(f"{method}: a handler of no known kind cannot be guarded")

    @contextlib.asynccontextmanager
    async def _admitted(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[Principal]:
        """Aborts the call unless every check passes; otherwise binds the
        caller for the duration of the call and holds its stream slot (for a
        method in ``limited_streams``, whatever its kind) until the call ends."""
        principal = await self._authorise(method, context)
        counted = method in self._limited_streams
        if counted and not self._streams.try_acquire(principal.subject):
            await _refuse(
                context,
                "too_many_streams",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many concurrent streams: the limit is {self._streams.max_per_key} per account",
                (("retry-after-ms", "1000"),),
            )
        binding = bind_principal(principal)
        try:
            yield principal
        finally:
            # Also when the client cancels: the slot must not leak.
            if counted:
                self._streams.release(principal.subject)
            with contextlib.suppress(ValueError):
                # ValueError: a stream generator finalised from another
                # context; the binding died with the call's own context.
                reset_principal(binding)

    async def _authorise(self, method: str, context: grpc.aio.ServicerContext) -> Principal:
        # Authenticate before anything else: were the policy consulted first,
        # an anonymous caller could tell guarded-but-unlisted methods (denied)
        # from the others (unauthenticated).
        try:
            token = _bearer_token(context.invocation_metadata())
            if token is None:
                await _refuse(
                    context,
                    "missing_token",
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing bearer token",
                    _WWW_AUTHENTICATE,
                )
            principal = await self._verifier.verify(token)
        except InvalidToken as exc:
            await _refuse(
                context,
                f"invalid_token:{exc.reason}",
                grpc.StatusCode.UNAUTHENTICATED,
                "invalid or expired token",
                _WWW_AUTHENTICATE,
            )
        trace.get_current_span().set_attribute("enduser.id", principal.subject)
        roles = self._policy.get(method)
        if roles is None:
            if method not in self._reported_without_policy:
                self._reported_without_policy.add(method)
                log.error("%s has no entry in the auth policy: every call to it is refused", method)
            await _refuse(context, "no_policy", grpc.StatusCode.PERMISSION_DENIED, "method not permitted")
        if roles and not roles & principal.roles:
            first, *others = sorted(roles)
            alternatives = f" (or {' or '.join(others)})" if others else ""
            await _refuse(
                context,
                "permission",
                grpc.StatusCode.PERMISSION_DENIED,
                f"this account needs the role {first}{alternatives} for {method.rpartition('/')[2]}",
            )
        await self._charge(principal, context)
        return principal

    async def _charge(self, principal: Principal, context: grpc.aio.ServicerContext) -> None:
        """Takes one token from the caller's bucket, or aborts the call."""
        wait = self._limiter.check(principal.subject)
        if wait > 0:
            wait_ms = str(math.ceil(wait * 1000))
            await _refuse(
                context,
                "rate_limited",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit exceeded: {self._limiter.rate_per_second:g} requests/s per account; "
                f"retry after {wait_ms} ms",
                (("retry-after-ms", wait_ms),),
            )

    async def _charged(
        self, requests: AsyncIterator[Any], principal: Principal, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """The client's messages, each after the first charged like a call:
        otherwise one stream would carry any number of requests for the
        price of one. (A handler reading with context.read() instead of this
        iterator would go uncharged; none does.)"""
        first = True
        async for request in requests:
            if not first:
                await self._charge(principal, context)
            first = False
            yield request

    async def _until_token_expiry(
        self, items: AsyncIterator[Any], principal: Principal, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """``items`` until the caller's token expires (with the verifier's
        leeway); then the stream ends with UNAUTHENTICATED and the client
        calls again with a fresh token, which is checked afresh."""
        loop = asyncio.get_running_loop()
        # Token times are wall-clock; timers run on the loop's monotonic clock.
        # A handler that ends its own stream at the expiry (WatchInvoices,
        # which then says where to resume) gets there first: the gate is the
        # backstop, ``stream_grace_seconds`` later.
        remaining = principal.expires_at + self._verifier.leeway_seconds + self._stream_grace - self._clock()
        deadline = loop.time() + remaining
        iterator = aiter(items)
        while True:
            # The yield stays outside the timeout: while suspended there the
            # task runs gRPC's send, which the timeout must not cancel.
            timeout = asyncio.timeout_at(deadline)
            try:
                async with timeout:
                    item = await anext(iterator)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if not timeout.expired():
                    raise  # the handler's own timeout, not ours
                await _refuse_expired(context)
            # A handler that never waits gives the timer no chance to fire.
            if loop.time() >= deadline:
                await _refuse_expired(context)
            yield item

    async def _within_default_deadline(
        self, context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[Any]]
    ) -> Any:
        limit = self._default_deadline
        # grpc.aio's time_remaining() is None when the client set no deadline.
        if limit is None or context.time_remaining() is not None:
            return await call()
        timeout = asyncio.timeout(limit)
        try:
            async with timeout:
                return await call()
        except TimeoutError:
            if not timeout.expired():
                raise  # the handler's own timeout, not ours
            await _refuse(
                context,
                "deadline",
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no deadline set; the server's default of {limit:g}s passed",
            )


def _bearer_token(metadata: Any) -> str | None:
    """The token of the "authorization: Bearer <token>" header, None without one."""
    values = [value for key, value in metadata or () if key == "authorization"]
    if not values:
        return None
    if len(values) > 1:
        # Two credentials: which one the handler's caller is would be a guess.
        raise InvalidToken("malformed")
    value = values[0]
    if not isinstance(value, str):
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def _refuse(
    context: grpc.aio.ServicerContext,
    reason: str,
    code: grpc.StatusCode,
    details: str,
    trailing_metadata: tuple[tuple[str, str], ...] = (),
) -> NoReturn:
    REFUSALS.add(1, {"reason": reason})
    await context.abort(code, details, trailing_metadata=trailing_metadata)
    raise AssertionError("unreachable: context.abort raises")


async def _refuse_expired(context: grpc.aio.ServicerContext) -> NoReturn:
    await _refuse(
        context,
        "token_expired",
        grpc.StatusCode.UNAUTHENTICATED,
        "access token expired; call again with a new token",
        _WWW_AUTHENTICATE,
    )
