"""The CPU shape of ``grpo_throughput.py``: SmolLM2-135M-Instruct (real weights), 2 prompts x 4, 64 tokens.

Run (from the repository root; needs ``models/smollm2-135m-instruct``, e.g. ``stonk model fetch smollm2``)::

    python benchmarks/cpu_throughput.py                       # ours (trainer as configured), ours_hf_full, trl
    python benchmarks/cpu_throughput.py --steps 3 --warmup 1

Prompts are the project's real rendered prompts (the ``seed`` template, chat-formatted) for
synthetic examples; completions are forced to 64 tokens. Float32, no quantisation. "ours" is the
trainer as configured (:class:`stonklib.sampling.FastSampler`, eager on CPU, and shared-prefix
log-probs); "ours_hf_full" is the same trainer with HF ``generate`` and full-forward log-probs,
the simple reference path, as an ablation.
Process CPU seconds per step are reported too: on a shared machine they are steadier than wall time.
Every flag of ``grpo_throughput.py`` is accepted.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grpo_throughput import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    defaults = ["--shape", "cpu", "--systems", "ours,ours_hf_full,trl", "--steps", "1", "--warmup", "0"]
    main(defaults + args)  # later flags win in argparse
