"""stonklib: the package behind the Stonk GRPO research workbook.

The data flows one way; each module owns one arrow of it::

    data ─▶ prompts ─▶ rollout ─▶ rewards ─▶ grpo (advantages/loss) ─▶ trainer
                                     │                                  │
                                     └──────▶ market / runlog ◀─────────┘ ─▶ evaluate ─▶ plots ─▶ notebooks

Run ``stonk --help`` for the command line, or open ``notebooks/`` for the workbook.
"""

import os as _os

# OpenMP's default spin-waiting makes small matrix products ~100x slower when the
# cores are shared (measured: 5 ms instead of 0.04 ms for an [8,576]x[576,576]
# product on a 2-core VM with one busy neighbour), which dominates CPU decoding.
# Passive waiting costs nothing measurable on big products. It only takes effect
# if stonklib is imported before torch; set OMP_WAIT_POLICY yourself to override.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
