"""``lit-ppool compare``: did a pooling help, where, and how sure? Runs, statistics and the report."""

from lit_ppool.compare.report import Comparison, write_report
from lit_ppool.compare.results import RunResult, load_results
from lit_ppool.compare.runner import run_comparison
from lit_ppool.compare.stats import paired_difference, summarize

__all__ = ["Comparison", "RunResult", "load_results", "paired_difference", "run_comparison", "summarize", "write_report"]
