"""Evaluation of predicted 3D clot masks: metrics, statistics, report, figures.

    metrics.case_metrics(pred, truth, spacing_mm)   per-case metrics dict
    stats.summarize(values)                         mean/median/std/bootstrap CI
    stats.detection_summary(rows)                   lesion/case detection rates
    report.write_report(rows, out_dir)              metrics.csv + summary.json
    report.markdown_table(summary)                  Markdown summary table
    figures.*                                       PNG figures (matplotlib Agg)
    biomarkers.case_biomarkers(mask, spacing_mm, volumes)   clot volume, length, area, HU, perviousness
    agreement.agreement_table(rows)                 pred vs true biomarkers: r, rho, ICC(2,1), Bland-Altman
    uncertainty.uncertainty_map / case_uncertainty  voxel and case uncertainty from TTA/MC members
    export.save_nifti_prediction / save_dicom_seg   predictions on the source grid, DICOM-SEG (highdicom)
    html_report.write_html_report(out_dir, ...)     self-contained report.html
    scoring.score_folder(pred_dir, truth_dir, out)  testing step 2: metrics.csv + summary.json from files
    rendering.render_report(out_dir, cases)         testing step 3: figures + report.html from files

numpy/scipy/matplotlib (export: nibabel, highdicom); no Keras import, so evaluation runs anywhere.
`figures` and the modules listed after it are imported on demand (matplotlib,
scipy.stats, nibabel and highdicom are slow to import).
"""

from clotseg.evaluation.metrics import case_metrics
from clotseg.evaluation.report import markdown_table, write_report
from clotseg.evaluation.stats import detection_summary, summarize

__all__ = ["case_metrics", "summarize", "detection_summary", "write_report", "markdown_table"]
