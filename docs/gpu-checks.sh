#!/usr/bin/env bash
# The GPU checks still open, as one device run (docs/gpu.md has what earlier runs measured):
#   issue 3: KD, the ribbon TPA and Align-TI at real size in one invocation, with FlexAttention (the
#            ribbon's BlockMask, the continuation's too) and liger-kernel's fused LM-head losses;
#   issue 6: the 2B student against LLaVA-1.5-7B's shape with CUDA graphs, and the graph test (the
#            eager figures are docs/gpu.md's earlier run).
# On the device tool: `bash docs/gpu-checks.sh` with timeout_s 590 (each step has its own limit, so
# the run ends inside it); logs and the benches' JSON land in $OUT. It first prints which packages
# the machine lacks: carry those as wheels (/work/.library/device/README.md) and run it again.
set -u
OUT=${OUT:-runs/gpu-checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 - <<'PY' 2>&1 | tee "$OUT/versions.txt"
import importlib.metadata as metadata
for name in ("torch", "transformers", "accelerate", "deepspeed", "liger-kernel", "fastapi", "uvicorn",
             "prometheus-client", "httpx", "matplotlib", "scipy", "pyyaml", "pillow"):
    try:
        print(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"{name} MISSING")
PY
step() {  # step SECONDS COMMAND...: run with a limit, keep going whatever it returns
    local limit=$1
    shift
    echo "== $* (limit ${limit} s)" | tee -a "$OUT/log.txt"
    timeout "$limit" "$@" 2>&1 | tail -n 40 | tee -a "$OUT/log.txt"
}
step 60 python3 -m pytest -q tests/test_graphed_decoding.py
step 240 python3 -m distill bench --part scale --scale-steps 6 --methods kd,tpa-ribbon,align-ti \
    --scale-set train.gradient_checkpointing=false --scale-set loss.fused_kernel=true \
    --scale-set model.attn_implementation=flex_attention
step 60 python3 -m distill random-student --llm qwen2-1.5b --vision siglip-so400m-336 --dtype bfloat16 \
    --out /tmp/random/student-2b
step 90 python3 -m distill random-student --llm llama2-7b --vision clip-l-336 --vocab 32064 --dtype bfloat16 \
    --out /tmp/random/llava-1.5-7b
step 100 python3 -m serve bench --models /tmp/random/student-2b /tmp/random/llava-1.5-7b --requests 5 \
    --warm-up 2 --new-tokens 64 --out "$OUT/serve-graphs"
cp runs/bench/*.json "$OUT/" 2>/dev/null
echo "done: $OUT"
