"""``lit-ppool compare``: did a pooling help, where, and how sure? Runs, statistics and the report.

The run results it reads are run records (:mod:`lit_ppool.training.record`); ``RunResult`` is the
name compare gave them before the record had a module of its own.
"""

from lit_ppool.compare.report import Comparison, write_report
from lit_ppool.compare.runner import run_comparison
from lit_ppool.compare.stats import paired_difference, summarize
from lit_ppool.training.record import RunRecord, load_results

RunResult = RunRecord

__all__ = [
    "Comparison", "RunRecord", "RunResult", "load_results", "paired_difference", "run_comparison", "summarize", "write_report",
]
