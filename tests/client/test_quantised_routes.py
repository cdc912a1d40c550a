"""Quantised servers and compressed hidden states between real SmolLM2 processes.

A float32 server holds blocks 0:15 and an int8 server (`--quant int8`) blocks
15:30, each with a request log. A client sending hidden states as blockwise
8-bit (`codec="int8-block"`) generates through that mixed route: its tokens
must be exactly those of the same mixed model run in this process (float32
blocks, int8 blocks, every transfer encoded and decoded the same way), and
the text must read as text. Then a float32 server of blocks 15:30 joins, and
a client that requires `quant="none"` (and spot-checks every step) generates
the local float32 model's tokens without sending the int8 server anything.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from potluck.client import AutoDistributedModelForCausalLM
from potluck.testing.pipeline import local_pipeline
from potluck.testing.swarm import LocalSwarm, NodeProcess
from potluck.wire import WireCodec

pytestmark = pytest.mark.slow

TOKENS = 32
FLAGS = ["--announce-interval", "0.5", "--announce-ttl", "3", "--compute-threads", "1"]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The servers compute with one thread: so does the local reference."""
    own = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(own)


def requests(node: NodeProcess) -> list[dict[str, Any]]:
    path = node.data_dir / "requests.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_a_mixed_route_and_a_client_that_refuses_quantised_servers(
    smollm2_path: Path, tmp_path: Path, one_thread: None
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    messages = [{"role": "user", "content": "Name three colours of the rainbow."}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    codec = WireCodec.parse("int8-block")
    hops = [(0, 15, "none"), (15, 30, "int8")]
    expected_mixed = local_pipeline(smollm2_path, hops, codec, ids, TOKENS, eos=2)
    local = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    expected_float = local.generate(ids, max_new_tokens=TOKENS, do_sample=False)

    with LocalSwarm(tmp_path / "nodes") as swarm:
        boot = swarm.start_node("boot", extra=FLAGS)

        def server(name: str, blocks: str, *extra: str) -> NodeProcess:
            log = str(swarm.workdir / name / "requests.jsonl")
            flags = [*FLAGS, "--request-log", log, *extra]
            return swarm.start_node(name, model="smollm2", blocks=blocks, extra=flags)

        first = server("f32-a", "0:15")
        int8 = server("int8", "15:30", "--quant", "int8")
        mixed = AutoDistributedModelForCausalLM.from_pretrained(
            "smollm2", initial_peers=[boot.addr], codec="int8-block"
        )
        try:
            route = mixed.route()
            assert [(h.peer_id, h.server.quant) for h in route] == [
                (first.peer_id, "none"),
                (int8.peer_id, "int8"),
            ]
            got = mixed.generate(ids, max_new_tokens=TOKENS, do_sample=False)
            client = mixed.runtime.host.peer_id
        finally:
            mixed.close()
        assert torch.equal(got, expected_mixed)
        text = tokenizer.decode(got[0, ids.shape[1] :], skip_special_tokens=True)
        letters = sum(c.isalpha() or c.isspace() for c in text)
        assert len(text) >= 40 and letters >= 0.8 * len(text), text
        agree = (got[0, ids.shape[1] :] == expected_float[0, ids.shape[1] : got.shape[1]]).float()
        print(f"mixed int8 route: {text!r}; equal to float32 at {agree.mean():.0%} positions")
        for node in (first, int8):  # both hops ran the session in blockwise 8-bit
            opened = [r for r in requests(node) if r["kind"] == "open" and r["peer"] == client]
            assert [r["codec"] for r in opened] == ["int8-block/64"]

        second = server("f32-b", "15:30")
        strict = AutoDistributedModelForCausalLM.from_pretrained(
            "smollm2", initial_peers=[boot.addr], quant="none", spot_check_rate=1.0
        )
        try:
            route = strict.route()
            assert [h.peer_id for h in route] == [first.peer_id, second.peer_id]
            known = {s.peer_id for s in strict.swarm.table.live(time.time())}
            assert int8.peer_id in known  # announced, but beyond the client's limit
            got = strict.generate(ids, max_new_tokens=TOKENS, do_sample=False)
            refusing = strict.runtime.host.peer_id
        finally:
            strict.close()
        assert torch.equal(got, expected_float)
        assert all(r["peer"] != refusing for r in requests(int8)), "the int8 server got a state"
        assert any(r["peer"] == refusing for r in requests(second))
