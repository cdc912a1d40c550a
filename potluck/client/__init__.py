"""The client: a Hugging Face-compatible model whose blocks run on the swarm."""

from __future__ import annotations

from potluck.client.model import (
    AutoDistributedModelForCausalLM,
    DistributedModelForCausalLM,
    RemoteCache,
)
from potluck.client.routing import Hop, plan_route
from potluck.client.session import InferenceSession

__all__ = [
    "AutoDistributedModelForCausalLM",
    "DistributedModelForCausalLM",
    "Hop",
    "InferenceSession",
    "RemoteCache",
    "plan_route",
]
