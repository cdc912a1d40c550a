"""`potluck demo`: a whole swarm on 127.0.0.1 in one command.

Prepares SmolLM2 (once), starts a bootstrap node and three servers holding
blocks 0:10, 10:20 and 20:30 as separate processes, waits until the swarm
covers the model, streams a chat answer through the distributed model and
stops every process by PID.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rich.console import Console

from potluck.model import load_config, num_blocks, resolve_model
from potluck.testing.swarm import LocalSwarm

SPANS = ("0:10", "10:20", "20:30")


def run_demo(
    *,
    keep_running: bool = False,
    prompt: str = "What is a potluck dinner? Answer in two sentences.",
    max_new_tokens: int = 64,
    workdir: Path | None = None,
) -> None:
    from transformers import AutoTokenizer, TextStreamer

    from potluck.client import AutoDistributedModelForCausalLM

    console = Console(soft_wrap=True)
    path = resolve_model("smollm2")  # converts the bundled GGUF on first use
    blocks = num_blocks(load_config(path))
    spans = SPANS if blocks == 30 else (f"0:{blocks // 2}", f"{blocks // 2}:{blocks}")
    root = workdir or Path(tempfile.mkdtemp(prefix="potluck-demo-"))
    swarm = LocalSwarm(root)
    try:
        t0 = time.monotonic()
        boot = swarm.start_node("bootstrap")
        console.print(f"[bold]bootstrap[/] pid {boot.pid} at {boot.addr}")
        # all servers share this machine's cores: one torch thread each measures
        # fastest (docs/benchmarks.md); on its own machine a server uses them all
        servers = [
            swarm.start_node(
                f"server{i}",
                model="smollm2",
                blocks=span,
                wait=False,
                extra=["--compute-threads", "1"],
            )
            for i, span in enumerate(spans, 1)
        ]
        for node, span in zip(servers, spans, strict=True):
            swarm.wait_ready(node)
            console.print(f"[bold]server[/] pid {node.pid} serves blocks {span} at {node.addr}")
        model = AutoDistributedModelForCausalLM.from_pretrained(
            "smollm2", initial_peers=[boot.addr]
        )
        model.route()  # waits until the swarm covers every block
        tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
        console.print(f"swarm up in {time.monotonic() - t0:.1f} s\n")
        console.print(f"[bold]user:[/] {prompt}")
        messages = [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        console.print("[bold]assistant:[/] ", end="")
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        t1 = time.monotonic()
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer)
        new = out.shape[1] - ids.shape[1]
        elapsed = time.monotonic() - t1
        route = model.route()
        hops = " -> ".join(f"{h.start}:{h.end}@{h.peer_id[-6:]}" for h in route)
        console.print(
            f"\n{new} tokens in {elapsed:.1f} s ({new / elapsed:.1f} tokens/s) via {hops}"
        )
        model.close()
        if keep_running:
            console.print(
                "\nThe swarm keeps running; connect from Python with:\n\n"
                "    from potluck.client import AutoDistributedModelForCausalLM\n"
                "    model = AutoDistributedModelForCausalLM.from_pretrained(\n"
                f"        'smollm2', initial_peers=['{boot.addr}'])\n\n"
                "Press Ctrl-C to stop it."
            )
            try:
                while all(n.alive() for n in swarm.nodes):
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    finally:
        swarm.stop()
        console.print("all nodes stopped")
