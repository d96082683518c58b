"""Stage 2, model: what the model is, never its weights.

`sources/` finds config.json and safetensors headers (local folder, shipped catalogue, the
Hub); `build.py` builds the model on the meta device as `from_pretrained` would and turns it into
a frozen `Inventory` (`inventory.py`); `cache.py` keeps inventories on disk; `hf.py` is the one
place that touches private transformers names, per installed version, with self-checks.
"""
