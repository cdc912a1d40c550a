"""SmolLM2-135M-Instruct served by three real node processes (0:10, 10:20, 20:30)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer

from potluck.client import AutoDistributedModelForCausalLM
from potluck.testing.swarm import LocalSwarm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def swarm_addr(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with LocalSwarm(tmp_path_factory.mktemp("smol")) as local:
        boot = local.start_node("boot")
        servers = [
            local.start_node(f"s{i}", model="smollm2", blocks=span, wait=False)
            for i, span in enumerate(("0:10", "10:20", "20:30"))
        ]
        for node in servers:
            local.wait_ready(node)
        yield boot.addr


def test_smollm2_greedy_32_tokens_equal_local(
    swarm_addr: str, smollm2_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    messages = [{"role": "user", "content": "Name three colours of the rainbow."}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    local = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    expected = local.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)

    model = AutoDistributedModelForCausalLM.from_pretrained("smollm2", initial_peers=[swarm_addr])
    try:
        assert [(h.start, h.end) for h in model.route()] == [(0, 10), (10, 20), (20, 30)]
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        got = model.generate(
            ids, max_new_tokens=32, min_new_tokens=32, do_sample=False, streamer=streamer
        )
    finally:
        model.close()
    assert torch.equal(got, expected)
    answer = tokenizer.decode(got[0, ids.shape[1] :], skip_special_tokens=True)
    streamed = capsys.readouterr().out
    assert answer.strip() and answer.strip()[:20] in streamed


def test_demo_prints_an_answer_and_exits_0(smollm2_path: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "potluck",
            "demo",
            "--max-new-tokens",
            "24",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    assert "assistant:" in out and "all nodes stopped" in out
    answer = out.split("assistant:", 1)[1].split("tokens in", 1)[0]
    assert len(answer.split()) >= 5, out
    assert "Traceback" not in result.stderr
