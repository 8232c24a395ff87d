#!/usr/bin/env bash
# The `train` service of compose.yaml: one training command through `accelerate launch`.
#   CONFIG=tiny (default)   the tiny default end to end (quickstart), each stage under accelerate
#   CONFIG=configs/X.yaml   one stage: accelerate launch -m distill train $CONFIG $OVERRIDES
#   ACCELERATE_CONFIG       accelerate config (default: DeepSpeed ZeRO-2, configs/accelerate/zero2.yaml)
#   NUM_GPUS                processes to start (default: every visible GPU)
#   OVERRIDES               dotted overrides, e.g. "train.max_steps=100 train.batch_size=8"
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${CONFIG:-tiny}"
ACCELERATE_CONFIG="${ACCELERATE_CONFIG:-configs/accelerate/zero2.yaml}"
NUM_GPUS="${NUM_GPUS:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}"
read -r -a overrides <<< "${OVERRIDES:-}"

if [ "$CONFIG" = "tiny" ]; then
  exec python -m distill quickstart --launcher accelerate --accelerate-config "$ACCELERATE_CONFIG" \
    --num-processes "$NUM_GPUS" ${OVERRIDES:+--overrides "${overrides[@]}"}
fi
exec accelerate launch --config_file "$ACCELERATE_CONFIG" --num_processes "$NUM_GPUS" \
  -m distill train "$CONFIG" "${overrides[@]}" ${RESUME:+--resume}
