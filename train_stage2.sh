#!/usr/bin/env bash
# The seed's Stage II command, kept working: a thin wrapper over `stonk train`.
#
#   ./train_stage2.sh STAGE1_MODEL [--epochs 3] [--batch_size 4] [--lr 5e-6] [--kl_coef 0.05]
#                     [--save_steps 50] [--quantize] [--natural_distribution] [--max_train_samples 5000]
#                     [any other `stonk train` flag, e.g. --output_dir runs/x --max_steps 20]
#
# STAGE1_MODEL is a model directory, a hub id, or a Stage I PEFT adapter directory.
set -euo pipefail
if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: $0 STAGE1_MODEL [--epochs N] [--batch_size N] [--lr LR] [--kl_coef K] [--save_steps N] [--quantize] [--natural_distribution] [--max_train_samples N]" >&2
  exit 2
fi
stage1="$1"; shift
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -x "$here/.venv/bin/stonk" ]]; then stonk="$here/.venv/bin/stonk"; else stonk="stonk"; fi
exec "$stonk" train --stage 2 --stage1_model "$stage1" --output_dir "${STONK_OUTPUT_DIR:-runs/stage2}" "$@"
