"""The distributed model's arithmetic in one process: spans, codecs, greedy steps.

`local_pipeline` runs what a client and its servers compute, without any
network: the client's embeddings, then for each hop its blocks (quantised as
that server's `--quant` says), every hand-off (the embeddings, each hop's
output) encoded and decoded once under the session's codec, as its sender
encodes it and the client relays it, a prefill and then one token per step,
then the LM head. With the servers' thread count, a real
route must give exactly these tokens: tests compare the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from potluck.model import BlockSpan, ClientHead
from potluck.wire import WireCodec

__all__ = ["local_pipeline"]


def local_pipeline(
    path: Path,
    hops: Sequence[tuple[int, int, str]],
    codec: WireCodec,
    ids: torch.Tensor,
    tokens: int,
    *,
    eos: int | None = None,
    min_tokens: int = 0,
) -> torch.Tensor:
    """Greedy `tokens` new tokens after `ids` (1, prompt) through `hops`, each
    `(start, end, quant)`; stops after `eos` once `min_tokens` are out (before
    that, `eos` is never chosen, as `generate(min_new_tokens=...)` does)."""
    head = ClientHead.load(path)
    spans = [BlockSpan.load(path, start, end, quant=quant) for start, end, quant in hops]
    caches = [span.new_cache() for span in spans]
    out, current = ids, ids
    for made in range(tokens):
        hidden = codec.encode(head.embed(current).float()).decode()  # (1, new, hidden)
        for span, cache in zip(spans, caches, strict=True):
            # each output travels once: the client relays it to the next hop as it came
            hidden = codec.encode(span.forward(hidden, cache).float()).decode()
        logits = head.logits(hidden)[:, -1:].clone()  # (1, 1, vocab)
        if eos is not None and made < min_tokens:
            logits[..., eos] = -torch.inf
        current = logits.argmax(-1)  # (1, 1)
        out = torch.cat([out, current], dim=1)
        if eos is not None and int(current) == eos:
            break
    return out
