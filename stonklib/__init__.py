"""stonklib: the package behind the Stonk GRPO research workbook.

The data flows one way; each module owns one arrow of it::

    data ─▶ prompts ─▶ rollout ─▶ rewards ─▶ grpo (advantages/loss) ─▶ trainer
                                     │                                  │
                                     └──────▶ market / runlog ◀─────────┘ ─▶ evaluate ─▶ plots ─▶ notebooks

Run ``stonk --help`` for the command line, or open ``notebooks/`` for the workbook.
"""

__version__ = "0.1.0"
