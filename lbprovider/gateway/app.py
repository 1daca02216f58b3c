"""The gateway's HTTP application: the doors, the routes, and the one request path.

Doors (aiohttp middlewares, outermost first): every request gets one access-log line
and, whatever goes wrong, an answer in its endpoint's error form with no traceback
(``_errors``); a request with an ``Origin`` header is refused unless allowed, and every
path but ``GET /health`` needs a serve key (``_doors``); bodies are bounded by
``client_max_size``.

Forms register here (:data:`FORMS`): one module per API, each a
:class:`~lbprovider.gateway.forms.Form`.  :func:`answer` is the one request path
every form shares: parse, resolve the load balancer, then either one whole answer, or a
stream opened up to its first content chunk *before* the status line is sent — so when
nothing can serve, the client gets a real status (503 + ``Retry-After``, 429, 401, 400)
rather than a 200 with an error inside.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from lbprovider.errors import (
    ConfigError,
    LBError,
    NoBackendAvailableError,
    RefusedError,
    RequestRejectedError,
)
from lbprovider.gateway import chat, messages, responses
from lbprovider.gateway.forms import Asked, ErrorKind, Form
from lbprovider.gateway.keys import ServeKeys, presented_key
from lbprovider.gateway.metrics import GatewayMetrics, RequestOutcome
from lbprovider.gateway.served import Served, UnknownModelError
from lbprovider.ledger import Ledger
from lbprovider.provider import LoadBalancingProvider
from lbprovider.redaction import scrub
from lbprovider.routing import RequestTrace
from lbprovider.transport import Usage

__all__ = ["FORMS", "Gateway", "Settings", "answer", "build_app", "status_of"]

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

access_log = logging.getLogger("lbprovider.gateway.access")
logger = logging.getLogger("lbprovider.gateway")

# One module per API form; the Anthropic form answers errors on its paths too.
FORMS: dict[str, Form] = {form.name: form for form in (chat.FORM, messages.FORM, responses.FORM)}
RETRY_AFTER_MAX_S = 30  # SPEC §3.3: the Retry-After given when nothing could serve
_KINDS_BY_STATUS = {
    400: ErrorKind.INVALID_REQUEST,
    401: ErrorKind.AUTHENTICATION,
    403: ErrorKind.PERMISSION,
    404: ErrorKind.NOT_FOUND,
    405: ErrorKind.INVALID_REQUEST,
    413: ErrorKind.TOO_LARGE,
    429: ErrorKind.RATE_LIMIT,
    503: ErrorKind.OVERLOADED,
    529: ErrorKind.OVERLOADED,
}


@dataclass
class Settings:
    """What ``lbprovider serve`` was started with (the doors' part)."""

    keys: ServeKeys
    allow_origins: frozenset[str] = frozenset()
    max_body_mb: float = 32.0


@dataclass
class Gateway:
    """One gateway's collaborators: served load balancers, doors, metrics."""

    served: Served
    settings: Settings
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    inflight: int = 0  # said on stderr when a drain begins


GATEWAY = web.AppKey("gateway", Gateway)


@dataclass
class Exchange:
    """What one request's access-log line says (never its prompt, never a key)."""

    model: str | None = None
    lb: str | None = None
    member: str | None = None
    status: int | str | None = None  # set when it differs from the response's
    usage: Usage | None = None
    first_ms: float | None = None
    outcome: RequestOutcome = RequestOutcome.OK


EXCHANGE = web.RequestKey("exchange", Exchange)


def _form_for(path: str) -> Form:
    """The form whose error shape a path answers in (OpenAI's by default)."""
    for prefix, form in FORMS.items():
        if path == prefix or path.startswith(prefix + "/"):
            return form
    return chat.FORM


def _error(
    form: Form,
    status: int,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    kind: ErrorKind | None = None,
) -> web.Response:
    kind = kind or _KINDS_BY_STATUS.get(status, ErrorKind.API_ERROR)
    return web.json_response(form.error(status, kind, message), status=status, headers=headers)


def status_of(exc: LBError) -> tuple[int, dict[str, str]]:
    """The status (and headers) a failed request answers with (SPEC §11.3)."""
    if isinstance(exc, RefusedError):
        return exc.status, {}
    if isinstance(exc, UnknownModelError):
        return 404, {}
    if isinstance(exc, RequestRejectedError):
        return (exc.status if exc.status in (400, 404, 413, 422) else 400), {}
    if isinstance(exc, ConfigError):
        return 400, {}
    if isinstance(exc, NoBackendAvailableError):
        headers: dict[str, str] = {}
        if exc.retry_after is not None:
            wait = min(RETRY_AFTER_MAX_S, max(1, math.ceil(exc.retry_after)))
            headers["Retry-After"] = str(wait)
        if exc.keys_rejected:
            return 401, {}
        if exc.status in (429, 529):
            return exc.status, headers
        return 503, headers
    return 503, {}


def _report(trace: RequestTrace, asked: Asked | None) -> dict[str, str]:
    headers = {"x-lbprovider-attempts": str(trace.attempts)}
    if trace.backend is not None:
        headers["x-lbprovider-backend"] = trace.backend
    if asked is not None and asked.dropped:
        headers["x-lbprovider-dropped-tools"] = ", ".join(asked.dropped)
    return headers


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(
            "the body is not JSON", field="(body)", hint="send a JSON object"
        ) from None
    if not isinstance(body, dict):
        raise ConfigError(
            f"the body must be a JSON object, not {type(body).__name__}", field="(body)"
        )
    return body


async def answer(gw: Gateway, form: Form, request: web.Request) -> web.StreamResponse:
    """The request path every form shares (see the module docstring)."""
    log = request[EXCHANGE]
    asked = form.parse(await _body(request), request.headers)
    log.model = asked.model
    name = gw.served.resolve(asked.model)
    log.lb = name
    try:
        provider = gw.served.provider(name)
    except ConfigError as exc:
        # The served profile is broken: the operator's to fix, not the client's request.
        return _error(form, 500, f"load balancer {name!r} cannot be used: {exc}")
    gw.inflight += 1
    gauge = gw.metrics.inflight.labels(name)
    gauge.inc()
    trace = RequestTrace()
    outcome = RequestOutcome.ERROR
    try:
        params = asked.params
        if asked.affinity_key:  # a session header or body field names the conversation
            params = {**params, "affinity_key": asked.affinity_key}
        if not asked.stream:
            result = await provider.complete_traced(
                asked.messages, trace, wire=asked.wire, **params
            )
            outcome = RequestOutcome.OK
            return web.json_response(form.answer(asked, result), headers=_report(trace, asked))
        response = await _stream(form, asked, params, provider, trace, request)
        outcome = log.outcome
        return response
    except asyncio.CancelledError:
        outcome = RequestOutcome.CANCELLED
        raise
    finally:
        log.member, log.usage = trace.backend, trace.usage
        gw.metrics.requests.labels(name, form.name, outcome.value).inc()
        if outcome is RequestOutcome.OK and trace.backend is not None:
            gw.metrics.served(trace.backend, trace.usage)
        gauge.dec()
        gw.inflight -= 1


async def _stream(
    form: Form,
    asked: Asked,
    params: Mapping[str, Any],
    provider: LoadBalancingProvider,
    trace: RequestTrace,
    request: web.Request,
) -> web.StreamResponse:
    started = time.monotonic()
    chunks = provider.stream_traced(asked.messages, trace, wire=asked.wire, **params)
    try:
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            first = None
        request[EXCHANGE].first_ms = (time.monotonic() - started) * 1000
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                **_report(trace, asked),
            }
        )
        await response.prepare(request)
        events = form.events(asked, (first.model if first else None) or trace.model or "")
        await response.write(events.open() + (events.chunk(first) if first else b""))
        try:
            async for chunk in chunks:
                if data := events.chunk(chunk):
                    await response.write(data)
        except LBError as exc:
            # It broke after it started and no member could continue: the form's error
            # event, never a clean end (SPEC §11.3).
            request[EXCHANGE].outcome = RequestOutcome.ERROR
            request[EXCHANGE].status = "interrupted"
            await response.write(events.fail(503, ErrorKind.OVERLOADED, exc.message))
        else:
            await response.write(events.close(trace))
        await response.write_eof()
        return response
    finally:
        await chunks.aclose()


def _handler(gw: Gateway, form: Form) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await answer(gw, form, request)

    return handle


@web.middleware
async def _errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """One access-log line per request; every failure in its endpoint's error form."""
    started = time.monotonic()
    log = request[EXCHANGE] = Exchange()
    form = _form_for(request.path)
    status: int | str = 500
    try:
        response: web.StreamResponse = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        if exc.status == 413:
            limit = request.app[GATEWAY].settings.max_body_mb
            message = f"the body is larger than the limit of {limit:g} MB"
        elif exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        elif exc.status == 404:
            message = f"no such endpoint: {request.path}"
        else:
            message = exc.reason
        return _error(form, exc.status, message)
    except LBError as exc:
        status, headers = status_of(exc)
        kind = ErrorKind.UNKNOWN_MODEL if isinstance(exc, UnknownModelError) else None
        return _error(form, status, exc.message, headers=headers, kind=kind)
    except (asyncio.CancelledError, ConnectionResetError):
        status = "cancelled"
        raise
    except Exception as exc:
        # A bug of ours: the client learns nothing of it, the log only its type and a
        # scrubbed message (no traceback: it may hold request text).
        logger.error(
            "internal error answering %s: %s: %s",
            request.path,
            type(exc).__name__,
            scrub(str(exc))[:200],
        )
        return _error(form, 500, "internal error in the gateway")
    finally:
        status = log.status or status
        usage, first = log.usage, log.first_ms
        access_log.info(
            "%s %s model=%s lb=%s member=%s status=%s first_chunk_ms=%s total_ms=%.0f tokens=%s",
            request.method,
            request.path,
            log.model or "-",
            log.lb or "-",
            log.member or "-",
            status,
            "-" if first is None else f"{first:.0f}",
            (time.monotonic() - started) * 1000,
            usage.total_tokens if usage is not None else "-",
        )


def _doors(settings: Settings) -> Any:
    @web.middleware
    async def doors(request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Browser origins refused; every path but ``GET /health`` keyed."""
        origin = request.headers.get("Origin")
        if origin is not None and origin not in settings.allow_origins:
            raise RefusedError(
                403,
                f"requests from a web page ({origin}) are refused; start the gateway "
                f"with --allow-origin {origin} to allow it",
            )
        if request.path == "/health":
            return await handler(request)
        if not settings.keys.accepts(presented_key(request.headers)):
            raise RefusedError(
                401,
                "a valid gateway key is required (Authorization: Bearer KEY or x-api-key: "
                "KEY): the one in LBPROVIDER_SERVE_KEY or in the key file `lbprovider serve` "
                "named when it started",
            )
        return await handler(request)

    return doors


def build_app(gw: Gateway) -> web.Application:
    """The aiohttp application of one gateway."""
    limit = int(gw.settings.max_body_mb * 1024 * 1024)
    app = web.Application(middlewares=[_errors, _doors(gw.settings)], client_max_size=limit)
    app[GATEWAY] = gw

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def models(request: web.Request) -> web.Response:
        return web.json_response(gw.served.models())

    async def metrics(request: web.Request) -> web.Response:
        members: set[str] = set()
        ledger: Ledger | None = None
        for name in gw.served.served():
            try:
                provider = gw.served.provider(name)
            except LBError:
                continue  # a broken profile is not the metrics' business
            members.update(provider.config.member_names)
            ledger = ledger or Ledger(provider.store)
        from prometheus_client import CONTENT_TYPE_LATEST

        body = (
            await gw.metrics.render(ledger, members, time.time())
            if ledger is not None
            else gw.metrics.render_local()
        )
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def count_tokens(request: web.Request) -> web.Response:
        body = await _body(request)
        counted = messages.count_tokens(body)
        log = request[EXCHANGE]
        log.model = body["model"]
        log.lb = gw.served.resolve(body["model"])  # unknown: 404, as on /v1/messages
        return web.json_response(counted)

    app.router.add_get("/health", health)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", metrics)
    for path, form in FORMS.items():
        app.router.add_post(path, _handler(gw, form))
    return app
