"""Stage 2, model: what the model is, never its weights.

`sources/` finds config.json and safetensors headers (local folder, shipped catalogue, the Hub);
`build.py` checks the config (`fields.py`) and has `hf.py` build the model on the meta device as
`from_pretrained` would and read it into a frozen `Inventory` (`inventory.py`), with the pure helpers
`cachelayout.py` (what a cache held, as a layout) and `prequant.py` (a pre-quantized scheme).
`hf.py` is the stage's only contact with torch and transformers, private names per installed version
with self-checks. `cache.py` keeps inventories on disk (`entrycheck.py`: each entry written and
checked); `digest.py` fingerprints a local folder; `kernels.py` says which Hub kernels a load fetches.
"""
