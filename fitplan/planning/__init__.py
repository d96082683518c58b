"""Planning: pure functions from an `Inventory`, a `Hardware` and `PlanOptions` to a `Plan`.

`workload.py` (what the options ask of the model, once per plan), `layout.py` (bytes of one tensor as
bitsandbytes lays it out), `prequant.py` (a pre-quantized checkpoint's stored layout), `generation.py`
(how the loaded model generates), `estimate.py` (`Sizes` per precision and layer, computed once;
`Estimate` per device), `placement.py` (which device holds which layers, as accelerate places them),
`speed.py` (decode tokens/s), `policy.py` (the best precision that fits, a reason for every rejection),
`suggest.py` (what would make it fit), `headroom.py` (the one headroom definition),
`tensor_parallel.py` (transformers' tensor parallelism per rank) and `plan.py` (the `Plan` and its
`from_pretrained` arguments as data). The vocabulary (precisions, units) is `fitplan.vocab`; measured
constants are `fitplan.calibration`. No I/O, no torch.
"""
