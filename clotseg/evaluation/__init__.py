"""Evaluation of predicted 3D clot masks: metrics, statistics, report, figures.

    metrics.case_metrics(pred, truth, spacing_mm)   per-case metrics dict
    stats.summarize(values)                         mean/median/std/bootstrap CI
    stats.detection_summary(rows)                   lesion/case detection rates
    report.write_report(rows, out_dir)              metrics.csv + summary.json
    report.markdown_table(summary)                  Markdown summary table
    figures.*                                       PNG figures (matplotlib Agg)

numpy/scipy/matplotlib only: no Keras import, so evaluation runs anywhere.
`figures` is imported lazily (matplotlib is slow to import).
"""

from clotseg.evaluation.metrics import case_metrics
from clotseg.evaluation.report import markdown_table, write_report
from clotseg.evaluation.stats import detection_summary, summarize

__all__ = ["case_metrics", "summarize", "detection_summary", "write_report", "markdown_table"]
