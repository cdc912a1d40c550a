"""Real node processes serving a tiny random Llama split unevenly (0:1, 1:5, 5:6).

Everything here crosses py-libp2p between separate processes on 127.0.0.1.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import trio
from transformers import AutoModelForCausalLM, DynamicCache

from potluck.client import AutoDistributedModelForCausalLM, DistributedModelForCausalLM
from potluck.client.runtime import ClientRuntime
from potluck.errors import RemoteCodecRange
from potluck.model import BlockSpan
from potluck.p2p.announce import account_of_peer
from potluck.p2p.protocols import PROTOCOL_INFERENCE, PROTOCOL_RPC
from potluck.testing.models import make_tiny_llama
from potluck.testing.swarm import LocalSwarm, NodeProcess
from potluck.verify.commitment import Commitment, output_root, replay_chain, row_digests
from potluck.wire import (
    MAGIC,
    CloseSession,
    ErrorReply,
    Forward,
    ForwardResult,
    InferenceStep,
    InfoRequest,
    OpenSession,
    ServerInfo,
    SessionOpened,
    StepResult,
    WireCodec,
)

pytestmark = pytest.mark.slow

SPANS = ("0:1", "1:5", "5:6")
MAX_FRAME = 1 << 20


@pytest.fixture(scope="module")
def swarm(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalSwarm, list[NodeProcess]]]:
    with LocalSwarm(tmp_path_factory.mktemp("swarm")) as local:
        local.start_node("boot", extra=["--announce-interval", "1", "--announce-ttl", "5"])
        servers = [
            local.start_node(
                f"s{i}",
                model=str(tiny_model),
                blocks=span,
                wait=False,
                extra=["--max-frame", str(MAX_FRAME), "--announce-interval", "1"],
            )
            for i, span in enumerate(SPANS)
        ]
        for node in servers:
            local.wait_ready(node)
        yield local, servers


@pytest.fixture(scope="module")
def model(
    swarm: tuple[LocalSwarm, list[NodeProcess]], tiny_model: Path
) -> Iterator[DistributedModelForCausalLM]:
    local, _ = swarm
    dist = AutoDistributedModelForCausalLM.from_pretrained(
        tiny_model, initial_peers=local.bootstrap_addrs
    )
    yield dist
    dist.close()


@pytest.fixture(scope="module")
def reference(tiny_model: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()


def test_route_uses_all_three_servers(model: DistributedModelForCausalLM) -> None:
    route = model.route()
    assert [(h.start, h.end) for h in route] == [(0, 1), (1, 5), (5, 6)]


def test_greedy_tokens_equal_local(
    model: DistributedModelForCausalLM, reference: torch.nn.Module
) -> None:
    ids = torch.tensor([[1, 17, 42, 99, 7, 250]])
    got = model.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)
    expected = reference.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)
    assert got.shape == (1, 38)
    assert torch.equal(got, expected)
    assert len(set(got[0, 6:].tolist())) > 1, "choose a seed whose greedy output varies"


def test_logits_match_local_over_prefill_and_20_decode_steps(
    model: DistributedModelForCausalLM, reference: torch.nn.Module
) -> None:
    ids = torch.tensor([[1, 5, 9, 200, 33, 71, 8]])
    cache = DynamicCache()
    with torch.no_grad(), model.inference_session(max_length=ids.shape[1] + 20):
        step_ids = ids
        for _ in range(21):  # the prefill, then 20 decode steps
            got = model(step_ids).logits
            want = reference(step_ids, past_key_values=cache, use_cache=True).logits
            rel = (got - want).abs().max() / want.abs().max()
            assert rel <= 1e-5, f"relative error {rel:.2e}"
            step_ids = want[:, -1:].argmax(-1)


def test_sampling_runs_and_respects_max_new_tokens(model: DistributedModelForCausalLM) -> None:
    ids = torch.tensor([[1, 2, 3]])
    torch.manual_seed(0)
    out = model.generate(ids, max_new_tokens=10, do_sample=True, temperature=0.8, top_p=0.9)
    assert out.shape[0] == 1 and 4 <= out.shape[1] <= 13


def test_eight_concurrent_sessions_all_correct(
    model: DistributedModelForCausalLM, reference: torch.nn.Module
) -> None:
    prompts = [torch.tensor([[1, 10 + i, 20 + 3 * i, 5]]) for i in range(8)]
    expected = [
        reference.generate(p, max_new_tokens=16, min_new_tokens=16, do_sample=False)
        for p in prompts
    ]
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = model.generate(
                prompts[i], max_new_tokens=16, min_new_tokens=16, do_sample=False
            )
        except BaseException as exc:  # noqa: BLE001 - asserted empty below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for i in range(8):
        assert torch.equal(results[i], expected[i]), f"session {i} diverged"


# -- bad input: typed errors, and everyone else keeps being served -------------------


async def _raw_exchange(runtime: ClientRuntime, server: ServerInfo, raw: bytes) -> object:
    stream = await runtime.host.open_stream(server.peer_id, PROTOCOL_INFERENCE, addrs=server.addrs)
    await stream.stream.write(raw)
    reply = await stream.receive()
    await stream.reset()
    return reply


def test_bad_requests_get_typed_errors_while_a_healthy_session_completes(
    swarm: tuple[LocalSwarm, list[NodeProcess]], tiny_model: Path
) -> None:
    _local, servers = swarm
    runtime = ClientRuntime()
    span = BlockSpan.load(tiny_model, 1, 5)
    try:
        server = runtime.run(_server_info, runtime, servers[1])
        assert (server.start, server.end) == (1, 5)

        async def scenario() -> dict[str, object]:
            host = runtime.host
            replies: dict[str, object] = {}
            healthy = await host.open_stream(server.peer_id, PROTOCOL_INFERENCE, addrs=server.addrs)
            await healthy.send(OpenSession("aa" * 8, 1, 5, 64))
            assert isinstance(await healthy.receive(), SessionOpened)
            torch.manual_seed(1)
            steps = [torch.randn(1, 5, 64), torch.randn(1, 1, 64), torch.randn(1, 1, 64)]
            outputs: list[torch.Tensor] = []

            async def healthy_steps() -> None:
                for i, hidden in enumerate(steps):
                    pos = sum(s.shape[1] for s in steps[:i])
                    await healthy.send(InferenceStep("aa" * 8, i, pos, hidden))
                    reply = await healthy.receive()
                    assert isinstance(reply, StepResult), reply
                    outputs.append(reply.hidden)
                    await trio.sleep(0.05)

            async def bad_requests() -> None:
                from potluck.wire import encode_frame

                bad_magic = b"XYZ\x01" + (4).to_bytes(4, "big") + b"junk"
                replies["malformed_frame"] = await _raw_exchange(runtime, server, bad_magic)
                huge = MAGIC + b"\x01" + (MAX_FRAME + 1).to_bytes(4, "big")
                replies["oversized"] = await _raw_exchange(runtime, server, huge)
                garbage = encode_frame(b"\x00\x00\x00\x05hello")
                replies["malformed_message"] = await _raw_exchange(runtime, server, garbage)

                stream = await host.open_stream(
                    server.peer_id, PROTOCOL_INFERENCE, addrs=server.addrs
                )
                await stream.send(OpenSession("bb" * 8, 1, 5, 64))
                assert isinstance(await stream.receive(), SessionOpened)
                await stream.send(
                    InferenceStep("bb" * 8, 0, 0, torch.randn(1, 2, 64, dtype=torch.float16))
                )
                replies["wrong_dtype"] = await stream.receive()
                await stream.send(InferenceStep("bb" * 8, 0, 0, torch.randn(1, 2, 32)))
                replies["wrong_shape"] = await stream.receive()
                await stream.send(InferenceStep("cc" * 8, 0, 0, torch.randn(1, 2, 64)))
                replies["unknown_session"] = await stream.receive()
                await stream.send(InferenceStep("bb" * 8, 5, 0, torch.randn(1, 2, 64)))
                replies["wrong_step"] = await stream.receive()
                await stream.send(OpenSession("dd" * 8, 0, 6, 64))
                replies["out_of_range"] = await stream.receive()
                # a blockwise 8-bit session: codes need their scales, which must be sane
                await stream.send(OpenSession("ee" * 8, 1, 5, 64, codec="int8-block/16"))
                opened = await stream.receive()
                assert isinstance(opened, SessionOpened) and opened.codec == "int8-block/16"
                codes = torch.randint(-127, 128, (1, 2, 64), dtype=torch.int8)
                await stream.send(InferenceStep("ee" * 8, 0, 0, codes, torch.ones(1, 2, 3)))
                replies["wrong_scales"] = await stream.receive()
                await stream.send(InferenceStep("ee" * 8, 0, 0, codes, -torch.ones(1, 2, 4)))
                replies["negative_scales"] = await stream.receive()
                await stream.send(InferenceStep("ee" * 8, 0, 0, torch.randn(1, 2, 64)))
                replies["floats_in_int8_session"] = await stream.receive()
                await stream.send(CloseSession("bb" * 8))
                await stream.receive()
                await stream.close()
                replies["forward_out_of_range"] = await host.request(
                    server.peer_id,
                    PROTOCOL_RPC,
                    Forward(0, 3, torch.randn(1, 2, 64)),
                    addrs=server.addrs,
                )
                replies["forward_other_quant"] = await host.request(
                    server.peer_id,
                    PROTOCOL_RPC,
                    Forward(1, 3, torch.randn(1, 2, 64), quant="nf4"),
                    addrs=server.addrs,
                )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(healthy_steps)
                nursery.start_soon(bad_requests)
            replies["outputs"] = outputs
            await healthy.send(CloseSession("aa" * 8))
            await healthy.receive()
            await healthy.close()
            replies["steps"] = steps
            return replies

        replies = runtime.run(scenario)
    finally:
        runtime.close()

    expected_codes = {
        "malformed_frame": "bad_frame",
        "oversized": "frame_too_large",
        "malformed_message": "bad_message",
        "wrong_dtype": "bad_tensor",
        "wrong_shape": "bad_tensor",
        "unknown_session": "unknown_session",
        "wrong_step": "bad_message",
        "out_of_range": "bad_span",
        "forward_out_of_range": "bad_span",
        "wrong_scales": "bad_tensor",
        "negative_scales": "bad_tensor",
        "floats_in_int8_session": "bad_tensor",
        "forward_other_quant": "wrong_quant",
    }
    for case, code in expected_codes.items():
        reply = replies[case]
        assert isinstance(reply, ErrorReply), f"{case}: {reply!r}"
        assert reply.code == code, f"{case}: {reply.code} {reply.message}"
        assert reply.message

    # the healthy session got exactly what the blocks compute locally
    steps = replies["steps"]
    outputs = replies["outputs"]
    assert isinstance(steps, list) and isinstance(outputs, list) and len(outputs) == 3
    cache = span.new_cache()
    for hidden, got in zip(steps, outputs, strict=True):
        assert torch.equal(got, span.forward(hidden, cache))
    assert all(node.alive() for node in servers)


async def _server_info(runtime: ClientRuntime, node: NodeProcess) -> ServerInfo:
    reply = await runtime.host.request(node.peer_id, PROTOCOL_RPC, InfoRequest(), addrs=[node.addr])
    assert isinstance(reply, ServerInfo)
    return reply


def test_stateless_forward_equals_local_blocks(
    swarm: tuple[LocalSwarm, list[NodeProcess]], tiny_model: Path
) -> None:
    _, servers = swarm
    runtime = ClientRuntime()
    try:
        info = runtime.run(_server_info, runtime, servers[1])
        hidden = torch.randn(1, 4, 64)

        async def forward() -> object:
            return await runtime.host.request(
                info.peer_id, PROTOCOL_RPC, Forward(2, 4, hidden), addrs=info.addrs
            )

        reply = runtime.run(forward)
    finally:
        runtime.close()
    assert isinstance(reply, ForwardResult)
    span = BlockSpan.load(tiny_model, 1, 5)
    assert torch.equal(reply.hidden, span.forward(hidden, start=2, end=4))


def test_a_replaying_forward_equals_a_session_of_those_steps(
    swarm: tuple[LocalSwarm, list[NodeProcess]], tiny_model: Path
) -> None:
    """`Forward.steps`: the server runs the history as those steps into a fresh cache,
    and signs the input chain a session of those steps would have."""
    _, servers = swarm
    runtime = ClientRuntime()
    hidden = torch.randn(1, 6, 64)
    try:
        info = runtime.run(_server_info, runtime, servers[1])

        async def forward() -> object:
            return await runtime.host.request(
                info.peer_id, PROTOCOL_RPC, Forward(2, 4, hidden, (3, 1, 2)), addrs=info.addrs
            )

        reply = runtime.run(forward)
    finally:
        runtime.close()
    assert isinstance(reply, ForwardResult) and reply.quant == "none"
    span = BlockSpan.load(tiny_model, 1, 5)
    cache = span.new_cache()
    parts = [
        span.forward(hidden[:, a:b], cache, start=2, end=4) for a, b in ((0, 3), (3, 4), (4, 6))
    ]
    assert torch.equal(reply.hidden, torch.cat(parts, dim=1))
    commitment = Commitment(
        swarm=reply.swarm,
        session="",
        step=0,
        start=2,
        end=4,
        inputs=replay_chain(hidden, (3, 1, 2)),
        outputs=output_root(row_digests(reply.hidden)),
        dtype="float32",
        server=account_of_peer(info.peer_id),
        signature=reply.signature,
    )
    commitment.verify()


def test_a_bfloat16_client_generates_through_float32_servers(
    swarm: tuple[LocalSwarm, list[NodeProcess]], tiny_model: Path
) -> None:
    local, _ = swarm
    dist = AutoDistributedModelForCausalLM.from_pretrained(
        tiny_model, initial_peers=local.bootstrap_addrs, dtype=torch.bfloat16
    )
    try:
        out = dist.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=8, min_new_tokens=8)
    finally:
        dist.close()
    assert out.shape == (1, 11)


def test_servers_announce_measured_throughput_bandwidth_and_load(
    swarm: tuple[LocalSwarm, list[NodeProcess]],
) -> None:
    _, servers = swarm
    runtime = ClientRuntime()
    try:
        infos = [runtime.run(_server_info, runtime, node) for node in servers]
    finally:
        runtime.close()
    for info in infos:
        assert info.throughput > 0
        assert info.bandwidth > 1e6  # loopback moves far more than 1 MB/s
        assert info.load >= 0
    throughput_file = servers[0].data_dir / "throughput.json"
    assert throughput_file.exists()  # cached per model, dtype and machine


def test_an_output_too_large_for_float16_is_the_codecs_fault_not_the_servers(
    tmp_path: Path,
) -> None:
    """A block whose output exceeds float16's range: the server answers `codec_range`,
    the client raises `RemoteCodecRange` without banning or replacing anyone, and the
    same server then serves a float32 session."""
    path = make_tiny_llama(tmp_path / "loud", num_layers=2, seed=3, initializer_range=0.5)
    loud = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        loud.model.layers[0].mlp.down_proj.weight.mul_(2000.0)  # outputs ~1e5, inputs ~1e2
    loud.save_pretrained(str(path))
    prompt = torch.tensor([[1, 33, 7, 250, 91, 4]])
    with LocalSwarm(tmp_path / "nodes") as local:
        local.start_node("boot")
        server = local.start_node("s", model=str(path), blocks="0:2")
        model = AutoDistributedModelForCausalLM.from_pretrained(
            path, initial_peers=local.bootstrap_addrs, codec="float16", route_timeout=20
        )
        try:
            with pytest.raises(RemoteCodecRange, match="overflow float16"):
                model.generate(prompt, max_new_tokens=4, do_sample=False)
            assert not model.swarm.banlist.is_banned(server.peer_id, time.time())
            model.codec = WireCodec("float32")
            out = model.generate(prompt, max_new_tokens=4, do_sample=False)
        finally:
            model.close()
        expected = loud.generate(prompt, max_new_tokens=4, do_sample=False)
        assert torch.equal(out, expected) and server.alive()
