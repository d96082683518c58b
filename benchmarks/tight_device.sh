#!/bin/bash
# One device call of the tight set (issue 19, item 4): headroom0.py's method with fitplan.load()'s
# expandable-segments allocator, on transformers 5.17 (the image's) and 5.25 in one pass per model.
# Run from the repository root of a checkout carrying .gpu-tight/: whl/ (bitsandbytes 0.50.2 and
# the fitplan wheel), whl525/ (transformers 5.25.0, huggingface_hub 2.4.0, httpx2, httpcore2,
# truststore, hf-xet, kernels, tomlkit) and bench/ (this checkout's benchmarks/). Usage:
#   DEADLINE=480 HARD_STOP=560 bash .gpu-tight/bench/benchmarks/tight_device.sh CASES [gpuinfo]
# Writes tight-h200-tf5.17.jsonl, tight-h200-tf5.25.jsonl (and gpuinfo-h200.json) under $OUT.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
G=.gpu-tight; B=$G/bench
PIP="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade"
$PIP --target /tmp/site517 $G/whl/*.whl || exit 1
$PIP --target /tmp/site525 $G/whl525/*.whl || exit 1
# transformers >= 5.25 fetches Hub kernels by default; this machine has no Hub (issue 19, item 2)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 USE_HUB_KERNELS=NO
if [ "$2" = gpuinfo ]; then
  PYTHONPATH=/tmp/site517 python3 $B/benchmarks/headroom0.py gpuinfo --out "$OUT/gpuinfo-h200.json"
fi
for s in /tmp/site517 /tmp/site525:/tmp/site517; do PYTHONPATH=$s python3 -P -c "import torch, transformers, accelerate, bitsandbytes, fitplan; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'bitsandbytes', bitsandbytes.__version__, 'fitplan', fitplan.__file__, torch.cuda.get_device_name(0))"; done 2>&1 | tee "$OUT/env.txt"
PYTHONPATH=/tmp/site517 python3 $B/benchmarks/headroom0.py run --cases "$1" --out-dir "$OUT" --prefix tight-h200 \
  --env /tmp/site517 --env /tmp/site525:/tmp/site517 --child-timeout 150 --min-case-s 35 \
  --deadline-s $((${DEADLINE:-480} - SECONDS)) --hard-stop-s $((${HARD_STOP:-560} - SECONDS)) 2>&1 | tee "$OUT/run.log"
