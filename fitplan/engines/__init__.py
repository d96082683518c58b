"""Tensor- and pipeline-parallel plans on the serving engines (vLLM, SGLang): per rank, exact, with the command.

`choose.deploy()` is the entry point (the pipeline's one call; `choose.plan_engine()` plans one engine's
settings); `vllm.py` and `sglang.py` mirror each engine's accounting at the
version in `fitplan.versions.ENGINE_VERSIONS` (docs/engines.md).
"""
