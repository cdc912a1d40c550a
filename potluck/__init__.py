"""Potluck: a volunteer swarm for LLM inference with a ledger."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
