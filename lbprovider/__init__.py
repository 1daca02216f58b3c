"""lbprovider: a load-balancing LLM provider.

    from lbprovider import LoadBalancingProvider

    lb = LoadBalancingProvider.from_profile("NAME")
    async for chunk in lb.stream(messages=[{"role": "user", "content": "hi"}]):
        print(chunk.text, end="")

The package root stays light: the engine is imported on first use, and litellm
only when a backend is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Chunk", "LoadBalancingProvider", "Result", "__version__"]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from lbprovider.provider import LoadBalancingProvider, Result
    from lbprovider.transport import Chunk


def __getattr__(name: str) -> Any:
    if name in ("LoadBalancingProvider", "Result"):
        from lbprovider import provider

        return getattr(provider, name)
    if name == "Chunk":
        from lbprovider.transport import Chunk

        return Chunk
    raise AttributeError(f"module 'lbprovider' has no attribute {name!r}")
