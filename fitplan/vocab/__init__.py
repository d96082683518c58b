"""The vocabulary every stage speaks, at the bottom of the tree: it imports nothing of fitplan's but
`errors`, and every stage imports it downward.

- `precision`: the precisions with their bytes, quality order, orders per preference, the hardware
  each needs, and the names of a pre-quantized checkpoint's stored rows;
- `units`: bytes as people write them and as tables print them, allocation alignment;
- `classes`: the transformers Auto classes a plan is for;
- `kinds`: the kinds of option (int, enum, precision, headroom, ...), each interpreted once: parsed
  from text, checked, and turned into a click type and a JSON-Schema fragment.
"""
