#!/usr/bin/env bash
# The GPU checks still open, as one device run, most wanted first (docs/gpu.md has what earlier runs measured):
#   issue 3: the fused-loss tests and the Align-TI objective under FlexAttention with gradients (tests),
#            then the ribbon TPA against KD at real size under FlexAttention (the ribbon's BlockMask), then
#            Align-TI against KD with liger-kernel's fused LM-head losses: one invocation each, so a
#            failure of one leaves the other's figures;
#   issue 6 (done on an H200 with eager decoding; CUDA graphs since): the graph test, then the 2B student
#            against LLaVA-1.5-7B's shape with CUDA graphs, as far as the time allows.
# On the device tool: `bash docs/gpu-checks.sh` with timeout_s 590. Each step has its own limit, cut to
# what is left before DEADLINE seconds (default 570) and skipped when under 30 s are left, so the run
# ends inside the call; logs and the benches' JSON land in $OUT. It first prints which packages the
# machine lacks: carry those as wheels (/work/.library/device/README.md) and run it again.
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
DEADLINE=${DEADLINE:-570}
step() {  # step SECONDS COMMAND...: run with a limit (cut to the time left), keep going whatever it returns
    local limit=$1 left=$((DEADLINE - SECONDS))
    shift
    if [ "$left" -lt 30 ]; then
        echo "== skipped, ${left} s left: $*" | tee -a "$OUT/log.txt"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $* (limit ${limit} s)" | tee -a "$OUT/log.txt"
    timeout "$limit" "$@" 2>&1 | tail -n 40 | tee -a "$OUT/log.txt"
}
step 40 python3 -m pytest -q tests/test_fused_losses.py
step 60 python3 -m pytest -q tests/test_tpa.py -k objective_under_flex   # with gradients on a GPU
step 170 python3 -m distill bench --part scale --scale-steps 6 --methods kd,tpa-ribbon \
    --scale-set train.gradient_checkpointing=false --scale-set model.attn_implementation=flex_attention \
    --out "$OUT/scale-flex.json"
step 170 python3 -m distill bench --part scale --scale-steps 6 --methods kd,align-ti \
    --scale-set train.gradient_checkpointing=false --scale-set loss.fused_kernel=true \
    --out "$OUT/scale-fused.json"
step 50 python3 -m pytest -q tests/test_graphed_decoding.py
step 60 python3 -m distill random-student --llm qwen2-1.5b --vision siglip-so400m-336 --dtype bfloat16 \
    --out /tmp/random/student-2b
step 90 python3 -m distill random-student --llm llama2-7b --vision clip-l-336 --vocab 32064 --dtype bfloat16 \
    --out /tmp/random/llava-1.5-7b
step 100 python3 -m serve bench --models /tmp/random/student-2b /tmp/random/llava-1.5-7b --requests 5 \
    --warm-up 2 --new-tokens 64 --out "$OUT/serve-graphs"
cp runs/bench/*.json "$OUT/" 2>/dev/null
echo "done: $OUT"
