"""What every API form of the gateway provides (SPEC §11.3): one module per form.

The gateway speaks three client APIs — OpenAI Chat Completions (:mod:`.chat`), Anthropic
Messages (:mod:`.messages`) and OpenAI Responses (:mod:`.responses`) — over one engine.
A form is pure translation between its wire JSON and the engine's types; it never
routes, never touches HTTP and never calls a backend:

- :meth:`Form.parse` turns a request body (and its headers) into an :class:`Asked`: the
  engine's messages and keyword arguments (Chat Completions form), plus the client's own
  body as a :class:`~lbprovider.transport.Wire` when members speaking that API should
  get it untouched (pass-through, SPEC §4.2).  A body the form cannot take raises
  :class:`~lbprovider.errors.InvalidRequestError` naming the field (the gateway answers
  400 in :meth:`Form.error`'s shape).
- :meth:`Form.answer` is a non-streaming answer's body, from the engine's
  :class:`~lbprovider.provider.Result`.
- :meth:`Form.events` is a streaming answer's encoder: :class:`EventWriter` turns the
  engine's chunks into this form's server-sent events, and ends them cleanly or with the
  form's error event.
- :meth:`Form.error` is this form's error body for a status and an :class:`ErrorKind`.

Everything a form cannot carry is dropped visibly: named in :attr:`Asked.dropped`,
which the gateway sends as a header and logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from lbprovider.transport import Chunk, Wire

if TYPE_CHECKING:
    from lbprovider.provider import Result
    from lbprovider.routing import RequestTrace

__all__ = ["SESSION_HEADERS", "Asked", "ErrorKind", "EventWriter", "Form", "session_key", "sse"]

# Headers coding assistants send to name a conversation (SPEC §3.5), first found wins:
# Claude Code's, the generic one, Codex's (it sends `session-id`; `session_id` is read too).
SESSION_HEADERS = ("x-claude-code-session-id", "x-session-id", "session_id", "session-id")


class ErrorKind(StrEnum):
    """What went wrong, in terms every form has a name for."""

    INVALID_REQUEST = "invalid_request"  # 400, 405
    AUTHENTICATION = "authentication"  # 401
    PERMISSION = "permission"  # 403
    NOT_FOUND = "not_found"  # 404: no such endpoint
    UNKNOWN_MODEL = "unknown_model"  # 404: no load balancer served under that name
    TOO_LARGE = "too_large"  # 413
    RATE_LIMIT = "rate_limit"  # 429
    OVERLOADED = "overloaded"  # 503, 529: nothing can serve now, try later
    API_ERROR = "api_error"  # 500: our own fault


@dataclass
class Asked:
    """One client request in the engine's terms.

    ``model`` is the name the client asked for; ``messages`` and ``params`` the engine's
    request (Chat Completions messages and keyword arguments, as
    :meth:`~lbprovider.provider.LoadBalancingProvider.stream` takes them); ``wire`` the
    client's own body, for members that speak its API; ``affinity_key`` a conversation
    key the client sent (a session header, ``prompt_cache_key``, ``metadata.user_id``);
    ``dropped`` what the request carried that no member will see (hosted tools, ...);
    ``options`` what only the form itself needs when it answers (``include_usage``, ...).
    """

    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    stream: bool
    wire: Wire | None = None
    affinity_key: str | None = None
    dropped: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)


class EventWriter(Protocol):
    """The events of one streamed answer, in one form.  Each method returns the bytes to
    send (possibly none); the gateway writes them in order."""

    def open(self) -> bytes:
        """What precedes the first chunk (``message_start``, ``response.created``, ...)."""
        ...

    def chunk(self, chunk: Chunk) -> bytes:
        """One engine chunk (its :attr:`~lbprovider.transport.Chunk.wire` events, when the
        member spoke this form's API, are sent back as they came, ``model`` rewritten)."""
        ...

    def close(self, trace: RequestTrace) -> bytes:
        """A clean end: the last events (usage from ``trace.usage``, ``[DONE]``, ...)."""
        ...

    def fail(self, status: int, kind: ErrorKind, message: str) -> bytes:
        """The stream broke after it started and no member could continue: this form's
        error event, never a clean end."""
        ...


class Form(Protocol):
    """One client API of the gateway (see the module docstring)."""

    name: str  # the endpoint, as metrics and the access log name it

    def parse(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> Asked:
        """The request in the engine's terms; a body the form cannot take raises
        :class:`~lbprovider.errors.InvalidRequestError` naming the field."""
        ...

    def answer(self, asked: Asked, result: Result) -> dict[str, Any]:
        """A non-streaming answer's JSON body (``model``: the serving member's
        ``provider/model``, ``result.model``)."""
        ...

    def events(self, asked: Asked, model: str) -> EventWriter:
        """The encoder of one streamed answer, made once its first chunk is in hand;
        ``model`` is the serving member's ``provider/model`` (a continuation's chunks
        name theirs in :attr:`~lbprovider.transport.Chunk.model`)."""
        ...

    def error(self, status: int, kind: ErrorKind, message: str) -> dict[str, Any]:
        """This form's error body."""
        ...


def session_key(headers: Mapping[str, str]) -> str | None:
    """A conversation key from the session headers, whatever their case (every form)."""
    lower = {str(k).lower(): v for k, v in headers.items()}
    for name in SESSION_HEADERS:
        if value := str(lower.get(name, "")).strip():
            return value
    return None


def sse(data: Mapping[str, Any] | str, event: str | None = None) -> bytes:
    """One server-sent event: ``event: NAME`` (when given) and one ``data:`` line."""
    import json

    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()
