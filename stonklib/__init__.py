"""stonklib: the package behind the Stonk GRPO research workbook.

The packages are the pipeline, in the order the data flows; imports only point down it::

    data ─▶ prompts ─▶ sampling ─▶ rewards ─▶ update ─▶ grpo ─▶ evaluate ─▶ workbook
     │                    ▲                               │
     └─ warmup (supervised cold start: its adapter is the first policy) ─┘

``data`` builds typed examples with chronological splits; ``prompts`` renders them; ``sampling``
draws G completions per prompt (``kernels`` holds its Triton code and the update's); ``rewards``
scores them; ``update`` computes the per-token log-probs the loss needs; ``grpo`` is the loss, the
loop, checkpoints and logs; ``evaluate`` scores a model against baselines; ``workbook`` is what
only the notebooks and ``stonk report`` use. ``config``, ``paths``, ``environment`` and ``models``
serve every stage; ``cli`` is the ``stonk`` command and the only module that parses arguments.

Importing stonklib changes nothing in the process (:mod:`stonklib.environment` says what the entry
points set). Run ``stonk --help`` for the command line, or open ``notebooks/`` for the workbook.
"""

__version__ = "0.1.0"
