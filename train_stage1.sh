#!/usr/bin/env bash
# Stage I: the same trainer with balanced up/down sampling and a fresh LoRA (r=16) on a base model.
#   ./train_stage1.sh BASE_MODEL [any `stonk train` flag]
set -euo pipefail
if [[ $# -lt 1 || "$1" == -* ]]; then echo "usage: $0 BASE_MODEL [stonk train flags]" >&2; exit 2; fi
base="$1"; shift
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -x "$here/.venv/bin/stonk" ]]; then stonk="$here/.venv/bin/stonk"; else stonk="stonk"; fi
exec "$stonk" train --stage 1 --balanced --stage1_model "$base" --output_dir "${STONK_OUTPUT_DIR:-runs/stage1}" "$@"
