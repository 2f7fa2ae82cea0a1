#!/usr/bin/env bash
# Train (or go on training) the reference GPT on a lent GPU machine, in one call of the device tool.
#
# Here, first:   python -m guard.models.reference.train tokens --workdir W --out guard/models/reference/weights
#                mkdir -p .gpu_carry && cp W/gpt_tokens.npz .gpu_carry/ && cp guard/models/reference/weights/card.json .gpu_carry/
#                recommended, to start from the shipped GPT: cp guard/models/reference/weights/gpt.safetensors .gpu_carry/init.safetensors
#                echo /.gpu_carry/ >> .git/info/exclude
# Device call:   run(command="bash bench/gpu_train_reference_gpt.sh", carry=[".gpu_carry"], timeout_s=560)
# Back here:     the files under $OUT: gpt.safetensors (the shipped candidate), gpt.stepN.safetensors (the
#                checkpoints averaged or chosen on validation prompts), card.json (its gpt section), train.log.
#
# STEPS / BATCH / LR / CKPT / AVG / DEVICE can be set in the environment. Size STEPS to the call's timeout_s
# (the step time on an H100 is not measured yet: run a short STEPS=200 first if the device time allows).
# Checked on the CPU with DEVICE=cpu STEPS=2 BATCH=2 CKPT=1 AVG=1 (the whole flow, 2 steps).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT" /tmp/gpt_work
STEPS=${STEPS:-12000}
BATCH=${BATCH:-64}
LR=${LR:-1e-3}
cp .gpu_carry/gpt_tokens.npz /tmp/gpt_work/
cp .gpu_carry/card.json "$OUT/card.json"
INIT=()
[ -f .gpu_carry/init.safetensors ] && INIT=(--init .gpu_carry/init.safetensors)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
PY=${PY:-python3}
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
PYTHONPATH=. $PY -m guard.models.reference.train gpt --device "${DEVICE:-cuda}" --workdir /tmp/gpt_work --out "$OUT" \
  --steps "$STEPS" --batch "$BATCH" --lr "$LR" --object-weight 3 --ckpt-every "${CKPT:-1000}" --average-last "${AVG:-4}" \
  --log-every 200 "${INIT[@]}" 2>&1 | tee "$OUT/train.log"
for s in $(seq $((STEPS - 3 * ${CKPT:-1000})) "${CKPT:-1000}" "$STEPS"); do
  [ -f /tmp/gpt_work/gpt.step$s.safetensors ] && cp /tmp/gpt_work/gpt.step$s.safetensors "$OUT/" || true
done
ls -la "$OUT"
