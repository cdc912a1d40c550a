"""Healing: servers killed with SIGKILL mid-generation, and routing around trouble."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from potluck.client import AutoDistributedModelForCausalLM, DistributedModelForCausalLM
from potluck.testing.models import make_tiny_llama
from potluck.testing.pipeline import local_pipeline
from potluck.testing.swarm import LocalSwarm, NodeProcess
from potluck.wire import WireCodec

pytestmark = pytest.mark.slow

FAST = ["--announce-interval", "0.5", "--announce-ttl", "3"]
#: Redundant coverage of an 8-block model: blocks 2..6 are held twice.
SPANS = {"a": "0:3", "b": "3:6", "c": "2:7", "d": "6:8"}
PROMPT = torch.tensor([[1, 33, 7, 250, 91, 4]])
NEW_TOKENS = 64


@pytest.fixture(scope="module")
def model8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(
        tmp_path_factory.mktemp("tiny8") / "llama8", num_layers=8, seed=5, initializer_range=0.5
    )


@pytest.fixture(scope="module")
def swarm(model8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSwarm]:
    with LocalSwarm(tmp_path_factory.mktemp("heal")) as local:
        local.start_node("boot", extra=FAST)
        nodes = [
            local.start_node(name, model=str(model8), blocks=span, extra=FAST, wait=False)
            for name, span in SPANS.items()
        ]
        for node in nodes:
            local.wait_ready(node)
        yield local


def _node(swarm: LocalSwarm, peer_id: str) -> NodeProcess:
    return next(n for n in swarm.nodes if n.alive() and n.info.get("peer_id") == peer_id)


def _client(swarm: LocalSwarm, model8: Path) -> DistributedModelForCausalLM:
    return AutoDistributedModelForCausalLM.from_pretrained(
        model8, initial_peers=swarm.bootstrap_addrs, step_timeout=10, route_timeout=20
    )


def generate_through(
    model: DistributedModelForCausalLM, streamer: KillAt
) -> tuple[torch.Tensor, int]:
    """NEW_TOKENS greedy tokens with `streamer` killing a server on the way; the tokens
    and how many failovers the session made. Closes the model."""
    try:
        got = model.generate(
            PROMPT,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            streamer=streamer,
        )
        return got, model.last_session_failovers
    finally:
        model.close()


class KillAt:
    """A streamer that SIGKILLs the server holding block 4 when token `at` is out."""

    def __init__(
        self,
        swarm: LocalSwarm,
        model: DistributedModelForCausalLM,
        at: int,
        sig: int = signal.SIGKILL,
    ) -> None:
        self.swarm, self.model, self.at, self.sig = swarm, model, at, sig
        self.seen = -1  # the first put() is the prompt
        self.victim: NodeProcess | None = None
        self.route: list[tuple[int, int]] = []  # the hops' blocks when it struck

    def put(self, value: torch.Tensor) -> None:
        self.seen += 1
        if self.seen == self.at and self.victim is None:
            session = self.model.current_session
            assert session is not None
            self.route = [(h.start, h.end) for h in session.route]
            hop = next(h for h in session.route if h.start <= 4 < h.end)
            self.victim = _node(self.swarm, hop.peer_id)
            self.victim.kill(self.sig)

    def end(self) -> None:
        pass


def test_generation_survives_a_sigkilled_middle_server_at_five_different_steps(
    swarm: LocalSwarm, model8: Path
) -> None:
    local = AutoModelForCausalLM.from_pretrained(model8, dtype=torch.float32).eval()
    expected = local.generate(
        PROMPT, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False
    )
    assert len(set(expected[0, PROMPT.shape[1] :].tolist())) > 4

    for at in (1, 9, 23, 40, 58):
        model = _client(swarm, model8)
        streamer = KillAt(swarm, model, at)
        got, failovers = generate_through(model, streamer)
        victim = streamer.victim
        assert victim is not None and not victim.alive(), f"nobody was killed at step {at}"
        assert torch.equal(got, expected), f"tokens differ after a kill at step {at}"
        assert failovers >= 1
        # bring the victim back (same identity) so the next run has redundancy again
        swarm.start_node(victim.name, model=str(model8), blocks=SPANS[victim.name], extra=FAST)


def test_generation_survives_a_server_that_stalls_mid_generation(
    swarm: LocalSwarm, model8: Path
) -> None:
    reference = _client(swarm, model8)
    try:
        expected = reference.generate(PROMPT, max_new_tokens=24, min_new_tokens=24, do_sample=False)
    finally:
        reference.close()
    model = AutoDistributedModelForCausalLM.from_pretrained(
        model8, initial_peers=swarm.bootstrap_addrs, step_timeout=3, route_timeout=20
    )
    try:
        streamer = KillAt(swarm, model, 12, sig=signal.SIGSTOP)  # frozen, socket still open
        started = time.monotonic()
        got = model.generate(
            PROMPT, max_new_tokens=24, min_new_tokens=24, do_sample=False, streamer=streamer
        )
        elapsed = time.monotonic() - started
    finally:
        model.close()
    victim = streamer.victim
    assert victim is not None
    victim.kill(signal.SIGKILL)  # a stopped process still dies on SIGKILL
    swarm.start_node(victim.name, model=str(model8), blocks=SPANS[victim.name], extra=FAST)
    assert torch.equal(got, expected)
    assert model.last_session_failovers >= 1
    assert elapsed < 3 + 20  # the step timeout, plus routing and the replay


def test_a_slow_server_is_avoided_in_favour_of_a_fast_one(model8: Path, tmp_path: Path) -> None:
    with LocalSwarm(tmp_path) as local:
        local.start_node("boot", extra=FAST)
        slow = local.start_node(
            "slow", model=str(model8), blocks="0:8", extra=[*FAST, "--compute-delay", "0.2"]
        )
        fast = local.start_node("fast", model=str(model8), blocks="0:8", extra=FAST)
        model = _client(local, model8)
        try:
            routes = [model.route() for _ in range(3)]
            out = model.generate(PROMPT, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        finally:
            model.close()
    assert out.shape == (1, PROMPT.shape[1] + 4)
    for route in routes:
        assert [h.peer_id for h in route] == [fast.peer_id], (slow.peer_id, route)


def test_a_server_joining_later_restores_coverage_after_one_leaves(
    model8: Path, tmp_path: Path
) -> None:
    with LocalSwarm(tmp_path) as local:
        local.start_node("boot", extra=FAST)
        first = local.start_node("first", model=str(model8), blocks="0:4", extra=FAST)
        tail = local.start_node("tail", model=str(model8), blocks="4:8", extra=FAST)
        model = _client(local, model8)
        try:
            assert [h.peer_id for h in model.route()] == [first.peer_id, tail.peer_id]
            first.kill(signal.SIGKILL)
            left_at = time.monotonic()
            local.start_node("later", model=str(model8), blocks="0:4", extra=FAST)
            out = model.generate(PROMPT, max_new_tokens=4, min_new_tokens=4, do_sample=False)
            restored_after = time.monotonic() - left_at
            route = model.route()
        finally:
            model.close()
    assert out.shape == (1, PROMPT.shape[1] + 4)
    assert first.peer_id not in [h.peer_id for h in route]
    assert restored_after < 60


def test_a_server_without_cache_room_refuses_with_a_typed_error_and_is_routed_around(
    model8: Path, tmp_path: Path
) -> None:
    from potluck.client.routing import Hop
    from potluck.client.session import InferenceSession

    with LocalSwarm(tmp_path) as local:
        local.start_node("boot", extra=FAST)
        tight = local.start_node(
            "tight", model=str(model8), blocks="0:8", extra=[*FAST, "--cache-tokens", "8"]
        )
        roomy = local.start_node("roomy", model=str(model8), blocks="0:8", extra=FAST)
        model = _client(local, model8)
        try:
            # routing already skips a server that announced too little free cache
            assert [h.peer_id for h in model.route(max_length=20)] == [roomy.peer_id]
            out = model.generate(PROMPT, max_new_tokens=8, min_new_tokens=8, do_sample=False)
            # forced onto the tight server, the session is refused and re-routed
            tight_info = next(s for s in model.swarm.servers() if s.peer_id == tight.peer_id)
            session = InferenceSession(
                model.runtime, model.swarm, [Hop(tight_info, 0, 8)], 20, policy=model.failover
            )
            with session:
                assert [h.peer_id for h in session.route] == [roomy.peer_id]
                assert session.failovers == 1
        finally:
            model.close()
    assert out.shape == (1, PROMPT.shape[1] + 8)
    assert "cache full" in tight.log_tail(200)  # the typed refusal, as the server logged it


class KillAndWatch(KillAt):
    """KillAt that also keeps what the victim's hop had received, and what its
    replacement received as the replay."""

    before: torch.Tensor | None = None
    replayed: torch.Tensor | None = None

    def put(self, value: torch.Tensor) -> None:
        session = self.model.current_session
        assert session is not None
        hop = next(h for h in session.hops if h.hop.start <= 4 < h.hop.end)
        if self.victim is not None and self.replayed is None and hop.history:
            self.replayed = hop.history[0]
        super().put(value)
        if self.victim is not None and self.before is None:
            self.before = torch.cat(hop.history, dim=1)


def test_a_compressed_session_survives_a_kill_with_the_same_tokens(
    swarm: LocalSwarm, model8: Path
) -> None:
    """Under blockwise 8-bit, the replacement gets the failed hop's inputs exactly as
    they travelled (re-encoding decoded 8-bit values would change them), so the
    tokens are those of the same route undisturbed: the local pipeline's."""
    model = _client(swarm, model8)
    model.codec = WireCodec.parse("int8-block/16")
    streamer = KillAndWatch(swarm, model, 23)
    got, failovers = generate_through(model, streamer)
    victim = streamer.victim
    assert victim is not None and not victim.alive() and failovers == 1
    swarm.start_node(victim.name, model=str(model8), blocks=SPANS[victim.name], extra=FAST)
    assert streamer.before is not None and streamer.replayed is not None
    assert torch.equal(streamer.replayed, streamer.before)
    hops = [(start, end, "none") for start, end in streamer.route]
    codec = WireCodec.parse("int8-block/16")
    expected = local_pipeline(model8, hops, codec, PROMPT, NEW_TOKENS, eos=2, min_tokens=NEW_TOKENS)
    assert torch.equal(got, expected)
