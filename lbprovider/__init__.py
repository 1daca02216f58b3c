"""lbprovider: a load-balancing LLM provider.

The package root stays light (no litellm import) so that the CLI and host plugins
start fast; the routing engine is imported on first use.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
