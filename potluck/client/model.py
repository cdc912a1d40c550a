"""A Hugging Face-compatible causal LM whose blocks run on the swarm.

```python
from transformers import AutoTokenizer
from potluck.client import AutoDistributedModelForCausalLM

model = AutoDistributedModelForCausalLM.from_pretrained("smollm2", initial_peers=[addr])
tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
print(tokenizer.decode(model.generate(ids, max_new_tokens=8)[0]))
```

The client holds only the embeddings, the final norm and the LM head
(`ClientHead`); every decoder block runs on a server. The class is a
`PreTrainedModel` with `GenerationMixin`, so `generate()` works as usual:
greedy and sampling, `max_new_tokens`, streamers, logits processors. Its
"cache" is a `RemoteCache` that stands for the servers' KV caches: each
`forward` sends only the new tokens' hidden states through the pipeline.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from potluck.client.routing import Hop
from potluck.client.runtime import ClientRuntime
from potluck.client.session import FailoverPolicy, InferenceSession, SessionOptions
from potluck.client.spotcheck import SpotChecker
from potluck.client.swarm import SwarmClient
from potluck.client.trust import TrustPolicy
from potluck.client.wallet import ClientWallet
from potluck.errors import ConfigError, MessageError
from potluck.model import (
    QUANT_MODES,
    ClientHead,
    load_config,
    model_identity,
    num_blocks,
    resolve_model,
)
from potluck.p2p.identity import Identity
from potluck.wire import FLOAT32_CODEC, WireCodec, wire_bytes


class RemoteCache(Cache):  # type: ignore[misc]
    """Stands for the KV caches held by the servers of an inference session."""

    def __init__(self, session: InferenceSession) -> None:
        super().__init__(layers=[])
        self.session = session
        self.token_ids: torch.Tensor | None = None  # (batch, seq) already sent

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return self.session.position

    @property
    def is_compileable(self) -> bool:
        return False

    def new_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The part of `input_ids` the servers have not seen yet.

        `generate()` passes the whole prompt on its first call; when a session
        continues an earlier generation, that prompt starts with the tokens
        already in the servers' caches, which must not be sent twice.
        """
        seen = self.token_ids
        if seen is not None and input_ids.shape[1] > seen.shape[1]:
            prefix = input_ids[:, : seen.shape[1]]
            if prefix.shape == seen.shape and torch.equal(prefix, seen):
                return input_ids[:, seen.shape[1] :]
        return input_ids

    def record(self, input_ids: torch.Tensor) -> None:
        self.token_ids = (
            input_ids if self.token_ids is None else torch.cat([self.token_ids, input_ids], dim=1)
        )


class DistributedModelForCausalLM(PreTrainedModel, GenerationMixin):  # type: ignore[misc]
    """A causal LM whose decoder blocks are served by the swarm."""

    main_input_name = "input_ids"
    _supports_sdpa = True

    def __init__(
        self,
        config: PreTrainedConfig,
        *,
        head: ClientHead,
        runtime: ClientRuntime,
        swarm: SwarmClient,
        failover: FailoverPolicy | None = None,
        spot_checker: SpotChecker | None = None,
        swarm_id: str | None = None,
        trust: TrustPolicy | None = None,
        wallet: ClientWallet | None = None,
        codec: WireCodec | None = None,
    ) -> None:
        super().__init__(config)
        #: How hidden states travel in new sessions (`potluck.wire.WireCodec`).
        self.codec = codec or FLOAT32_CODEC
        #: Which servers a `route="trusted"` session may use.
        self.trust = trust or TrustPolicy()
        self._wallet = wallet
        self.head = head
        self.runtime = runtime
        self.swarm = swarm
        self.failover = failover or FailoverPolicy()
        #: Re-runs a sampled fraction of steps elsewhere (None: no spot-checks).
        self.spot_checker = spot_checker
        #: The swarm's id from its genesis, when the client was given one.
        self.swarm_id = swarm_id
        vocab, hidden = head.embed_weight.shape
        self._embeddings = nn.Embedding(vocab, hidden, _weight=head.embed_weight, _freeze=True)
        self._active: RemoteCache | None = None
        #: The session a running `generate()` uses (for progress callbacks and tests;
        #: with several threads generating at once, the one that started last).
        self.current_session: InferenceSession | None = None
        #: How many failed hops the last `generate()` to finish replaced.
        self.last_session_failovers = 0
        #: The class each server granted the last `generate()` to finish.
        self.last_session_priorities: list[str] = []

    # -- Hugging Face plumbing ------------------------------------------------

    def get_input_embeddings(self) -> nn.Module:
        embeddings: nn.Module = self._embeddings
        return embeddings

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        if input_ids is None:
            raise ConfigError("the distributed model takes input_ids, not inputs_embeds")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ConfigError("padded batches are not supported yet: give one prompt per call")
        cache = past_key_values if isinstance(past_key_values, RemoteCache) else self._active
        if cache is None:  # a plain forward: a one-off session over the whole input
            with self._open_session(max_length=input_ids.shape[1]) as session:
                logits = self._run(RemoteCache(session), input_ids)
            return CausalLMOutputWithPast(logits=logits)
        logits = self._run(cache, input_ids)
        return CausalLMOutputWithPast(logits=logits, past_key_values=cache)

    def _run(self, cache: RemoteCache, input_ids: torch.Tensor) -> torch.Tensor:
        new = cache.new_tokens(input_ids)
        hidden = self.head.embed(new)  # (batch, new, hidden)
        out = cache.session.step(hidden)  # (batch, new, hidden)
        cache.record(new)
        return self.head.logits(out.to(self.head.dtype)).clone()  # (batch, new, vocab)

    def generate(self, inputs: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """`GenerationMixin.generate`, with an inference session opened for the call.

        Inside `with model.inference_session(...)` the open session is used
        (and continued); otherwise one is opened for exactly
        `prompt length + max_new_tokens` tokens and closed afterwards, with
        `priority="high"` (tickets buy class `paid` on every server) and
        `route="trusted"` (trusted servers only) if given.
        """
        options = SessionOptions(
            priority=kwargs.pop("priority", "normal"), route=kwargs.pop("route", "any")
        )
        own_session = kwargs.get("past_key_values") is None and self._active is None
        if options != SessionOptions() and not own_session:
            raise ConfigError("inside an open session, set priority and route on the session")
        if kwargs.get("past_key_values") is not None:
            return super().generate(inputs, **kwargs)
        if self._active is not None:
            return super().generate(inputs, past_key_values=self._active, **kwargs)
        ids = inputs if inputs is not None else kwargs.get("input_ids")
        if ids is None:
            raise ConfigError("generate() needs input_ids")
        max_length = self._max_length(ids.shape[-1], kwargs)
        with self._open_session(max_length=max_length, options=options) as session:
            self.current_session = session
            try:
                return super().generate(inputs, past_key_values=RemoteCache(session), **kwargs)
            finally:
                self.current_session = None
                self.last_session_failovers = session.failovers
                self.last_session_priorities = session.priorities

    def _max_length(self, prompt: int, kwargs: dict[str, Any]) -> int:
        gen = kwargs.get("generation_config") or self.generation_config
        new = kwargs.get("max_new_tokens", getattr(gen, "max_new_tokens", None))
        if new is not None:
            return int(prompt + new)
        total = kwargs.get("max_length", getattr(gen, "max_length", None)) or prompt + 20
        return int(max(total, prompt + 1))

    # -- sessions ---------------------------------------------------------------

    @property
    def wallet(self) -> ClientWallet:
        """The client's account on the swarm's ledger (needs `genesis=`)."""
        if self._wallet is None:
            raise ConfigError("the wallet needs the swarm's genesis: from_pretrained(genesis=...)")
        return self._wallet

    def route(self, *, max_length: int = 0, trusted: bool = False) -> list[Hop]:
        """The servers a new session of `max_length` tokens would use (skipping those
        that announced less free cache; only trusted ones if `trusted`), waiting up to
        `route_timeout` for coverage."""
        return self.runtime.run(
            functools.partial(
                self.swarm.wait_for_route,
                self.runtime.host,
                self.failover.route_timeout,
                min_free_cache=max_length,
                trust=self.trust if trusted else None,
            )
        )

    def _open_session(
        self, *, max_length: int, options: SessionOptions | None = None
    ) -> InferenceSession:
        options = options or SessionOptions()
        buyer = None
        if options.ticket_class is not None and self._wallet is not None:
            buyer = self._wallet.buy_ticket
        route = self.route(max_length=max_length, trusted=options.route == "trusted")
        return InferenceSession(
            self.runtime,
            self.swarm,
            route,
            max_length,
            policy=self.failover,
            checker=self.spot_checker,
            swarm_id=self.swarm_id,
            options=options,
            trust=self.trust,
            buyer=buyer,
            codec=self.codec,
        )

    @contextmanager
    def inference_session(
        self, *, max_length: int, priority: str = "normal", route: str = "any"
    ) -> Iterator[InferenceSession]:
        """An inference session that `generate()` and `forward()` use while it is open.

        `priority="high"` buys class `paid` on every server of the route with a
        ticket from `model.wallet`; `route="trusted"` sends hidden states only to
        trusted servers (`NoTrustedRouteError` if they do not cover the model).
        Also usable step by step: `session.step(hidden)` with hidden states of
        shape (batch, new tokens, hidden).
        """
        if self._active is not None:
            raise ConfigError("an inference session is already open on this model")
        options = SessionOptions(priority=priority, route=route)
        with self._open_session(max_length=max_length, options=options) as session:
            self._active = RemoteCache(session)
            try:
                yield session
            finally:
                self._active = None

    def close(self) -> None:
        """Stop the client's libp2p host."""
        self.runtime.close()


class AutoDistributedModelForCausalLM:
    """Entry point mirroring `transformers.AutoModelForCausalLM`."""

    @staticmethod
    def from_pretrained(
        name_or_path: str | Path,
        *,
        initial_peers: Sequence[str],
        route_timeout: float = 30.0,
        request_timeout: float = 60.0,
        step_timeout: float = 30.0,
        max_failovers: int = 8,
        identity: Identity | None = None,
        dtype: torch.dtype = torch.float32,
        genesis: str | Path | None = None,
        spot_check_rate: float | None = None,
        trusted_servers: Sequence[str] = (),
        quant: str | None = None,
        codec: str = "float32",
    ) -> DistributedModelForCausalLM:
        """Load the client's share of a model and join the swarm through `initial_peers`.

        `name_or_path` is "smollm2" or a local checkpoint folder; the servers
        must serve the same checkpoint (compared by its identity hash).
        `route_timeout` bounds the wait for servers covering the model;
        a hop slower than `step_timeout` for one step is replaced, as is one
        that dies or errs, up to `max_failovers` times per step.

        Every step's commitment is checked. With the swarm's `genesis` file,
        commitments must be for that swarm, validators are recognised by their
        genesis keys, and a fraction `spot_check_rate` of steps (default: the
        genesis's `spot_check_rate`) is re-run on a second server. Without a
        genesis, `spot_check_rate` (default 0) still spot-checks, trusting the
        servers' `validator` flag. Servers found wrong are excluded from this
        client's routes. When a session closes, every server that signed for a
        swarm with a ledger and was not found wrong gets a usage receipt signed
        with `identity`.

        With a genesis, `model.wallet` is the account of `identity` (read and
        written through the first initial peer), which pays for
        `priority="high"` and priced private routes. A `route="trusted"`
        session uses only servers that a genesis validator attested, the
        validators, and `trusted_servers` (peer IDs or ledger accounts).

        `quant` is the most quantised weights the client accepts: ``"none"``
        (unquantised servers only), ``"int8"`` (also int8 and dynamic-int8) or
        ``"nf4"``; None accepts any. Servers beyond it never receive a hidden
        state from this client: not as hops, replacements or spot-checkers.
        `codec` is how hidden states travel (``float32``, ``float16``,
        ``bfloat16``, ``int8-block`` or ``int8-block/B``; `model.codec` later).
        """
        if quant is not None and quant not in QUANT_MODES:
            raise ConfigError(f"quant must be one of {', '.join(QUANT_MODES)}, not {quant!r}")
        try:
            wire_codec = WireCodec.parse(codec)
        except MessageError as exc:
            raise ConfigError(f"codec: {exc}") from None
        path = resolve_model(str(name_or_path))
        config = load_config(path)
        config._name_or_path = str(path)
        head = ClientHead.load(path, dtype=dtype)
        swarm = SwarmClient(
            initial_peers,
            model_id=model_identity(path),
            num_blocks=num_blocks(config),
            payload_bytes=wire_bytes(wire_codec, int(config.hidden_size)),
            max_quant=quant,
        )
        runtime = ClientRuntime(identity, timeout=request_timeout)
        policy = FailoverPolicy(
            step_timeout=step_timeout, route_timeout=route_timeout, max_failovers=max_failovers
        )
        validators: tuple[str, ...] | None = None
        swarm_id = None
        rate = spot_check_rate
        wallet = None
        if genesis is not None:
            from potluck.ledger.genesis import Genesis

            swarm_genesis = Genesis.load(Path(genesis))
            if swarm_genesis.model_identity != swarm.model_id:
                raise ConfigError(
                    f"swarm {swarm_genesis.name!r} runs model {swarm_genesis.model_name}, "
                    f"not {name_or_path}"
                )
            validators, swarm_id = swarm_genesis.validators, swarm_genesis.swarm_id
            rate = swarm_genesis.economy.spot_check_rate if rate is None else rate
            wallet = ClientWallet(runtime, swarm_genesis, initial_peers[0])
        trust = TrustPolicy(
            validators=frozenset(validators or ()),
            swarm_id=swarm_id or "",
            listed=frozenset(trusted_servers),
        )
        checker = None
        if rate:
            checker = SpotChecker(rate, swarm=swarm, validators=validators, swarm_id=swarm_id)
        model = DistributedModelForCausalLM(
            config,
            head=head,
            runtime=runtime,
            swarm=swarm,
            failover=policy,
            spot_checker=checker,
            swarm_id=swarm_id,
            trust=trust,
            wallet=wallet,
            codec=wire_codec,
        )
        if (path / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(path)
        model.eval()
        return model
