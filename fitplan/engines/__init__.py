"""Tensor- and pipeline-parallel plans on the serving engines (vLLM, SGLang): per rank, exact, with the command.

`choose.plan_engine()` is the entry point; `vllm.py` and `sglang.py` mirror each engine's accounting at the
version in `fitplan.versions.ENGINE_VERSIONS` (docs/engines.md).
"""
