"""Models cut into spans: a server runs a `BlockSpan`, a client a `ClientHead`.

```python
path = resolve_model("smollm2")  # prepared once from the bundled GGUF
head = ClientHead.load(path)  # embeddings, final norm, LM head
spans = [BlockSpan.load(path, 0, 10), BlockSpan.load(path, 10, 30)]
caches = [span.new_cache() for span in spans]
hidden = head.embed(input_ids)  # (batch, seq, hidden)
for span, cache in zip(spans, caches):
    hidden = span.forward(hidden, cache)
logits = head.logits(hidden)  # (batch, seq, vocab)
```
"""

from __future__ import annotations

from potluck.model.checkpoint import (
    SUPPORTED_ARCHITECTURES,
    block_weight_bytes,
    load_config,
    model_identity,
    num_blocks,
)
from potluck.model.head import ClientHead
from potluck.model.quant import QUANT_BITS, QUANT_MODES, quant_within
from potluck.model.registry import (
    SMOLLM2_ALIASES,
    default_cache_dir,
    prepare_smollm2,
    resolve_model,
)
from potluck.model.span import BlockSpan, SpanCache

__all__ = [
    "QUANT_BITS",
    "QUANT_MODES",
    "SMOLLM2_ALIASES",
    "SUPPORTED_ARCHITECTURES",
    "BlockSpan",
    "ClientHead",
    "SpanCache",
    "block_weight_bytes",
    "default_cache_dir",
    "load_config",
    "model_identity",
    "num_blocks",
    "prepare_smollm2",
    "quant_within",
    "resolve_model",
]
