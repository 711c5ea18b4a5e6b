"""Market data -> typed :class:`Example` records -> chronological train/val/test files.

The arrows, one module each::

    sources (sp500 | csv) / hf (+ hf_schema)  ->  features (labels, metrics, history)  ->  splits  ->  build (parquet + summary)

``records`` holds the one typed record every source is converted into; ``anonymize``
turns a record into what an anonymised prompt shows. Run
``stonk data build --source sp500`` (or :func:`build_dataset`) once; then use
:func:`load_split` / :func:`load_examples`, or :func:`ensure_data` to build the
bundled data on first use.
"""

from stonklib.data.build import (
    build_dataset,
    ensure_data,
    format_summary,
    is_built,
    load_examples,
    load_source,
    load_split,
    load_summary,
    split_stats,
    to_examples,
)
from stonklib.data.features import SCHEMA, build_examples
from stonklib.data.hf import load_hf
from stonklib.data.records import Example, HistoryRow
from stonklib.data.sources import (
    DataError,
    Skips,
    SourceData,
    load_sp500,
    parse_dates,
    read_ohlcv_csv,
)
from stonklib.data.splits import (
    LeakageError,
    check_embargo,
    check_field_dates,
    check_history_dates,
    check_no_leakage,
    chronological_split,
    sample_dates_spread,
    sample_examples,
    split_dates,
)

__all__ = [
    "SCHEMA", "DataError", "Example", "HistoryRow", "LeakageError", "Skips", "SourceData",
    "build_dataset", "build_examples", "check_embargo", "check_field_dates", "check_history_dates", "check_no_leakage",
    "chronological_split", "ensure_data", "format_summary", "is_built", "load_examples", "load_hf",
    "load_source", "load_split", "load_sp500", "load_summary", "parse_dates", "read_ohlcv_csv",
    "sample_dates_spread", "sample_examples", "split_dates", "split_stats", "to_examples",
]
