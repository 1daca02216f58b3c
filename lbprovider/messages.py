"""What a request must look like before it is sent (SPEC §3.2 item 5).

A request the backends could only reject — text that is not valid UTF-8 (a lone
surrogate, from a terminal that passed raw bytes), a message list of the wrong shape —
is the caller's error, not a backend's: :func:`check_messages` refuses it before any
member is asked, so no member is blamed and no breaker moves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lbprovider.errors import InvalidRequestError

__all__ = ["check_messages"]

_HINT = "send a list of {'role': ..., 'content': ...} messages"


def check_messages(messages: Any) -> None:
    """Raise :class:`InvalidRequestError` unless ``messages`` can be sent as given."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence) or not messages:
        raise InvalidRequestError(
            "must be a non-empty list of messages", field="messages", hint=_HINT
        )
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise InvalidRequestError(
                f"must be a message object, not {type(message).__name__}", field=where, hint=_HINT
            )
        if not isinstance(message.get("role"), str):
            raise InvalidRequestError("needs a 'role' string", field=f"{where}.role", hint=_HINT)
        _check_text(message, where)


def _check_text(value: Any, where: str) -> None:
    """Every string inside a message must be valid Unicode text (encodable as UTF-8)."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRequestError(
                    "is not valid text (it holds bytes that are not UTF-8)",
                    field=where,
                    hint="send UTF-8 text; check the terminal's or the file's encoding",
                ) from None
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_text(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_text(item, f"{where}[{i}]")
