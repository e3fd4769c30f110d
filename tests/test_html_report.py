"""The self-contained HTML report (clotseg.evaluation.html_report): parsed with
html.parser, and rendered in headless Chromium where a chromium binary exists."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest

from clotseg.evaluation.html_report import find_chromium, fmt, render_with_chromium, write_html_report
from clotseg.evaluation.report import build_summary

URL_ATTRS = {"src", "href", "srcset", "action", "poster", "data", "formaction", "background", "cite", "manifest"}


class _Page(HTMLParser):
    """Tags with their attributes, and the cells of each row of #cases-table."""

    def __init__(self):
        super().__init__()
        self.tags, self.rows, self.header = [], [], []
        self._table = self._row = self._cell = None
        self._in_head = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table" and attrs.get("id") == "cases-table":
            self._table = True
        elif self._table and tag == "thead":
            self._in_head = True
        elif self._table and tag == "tr":
            self._row = []
        elif self._table and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "table" and self._table:
            self._table = False
        elif self._table and tag == "thead":
            self._in_head = False
        elif self._table and tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif self._table and tag == "tr" and self._row is not None:
            (self.header if self._in_head else self.rows).append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def _png(path, value):
    img = np.full((40, 60, 3), value, np.uint8)
    cv2.putText(img, str(value), (5, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 1)
    assert cv2.imwrite(str(path), img)
    return path


def _inputs(tmp_path):
    dices = [0.81, 0.42, None, 0.93, 0.0, 1.0]
    types = ["detected", "detected", "unlabeled", "detected", "missed", "true_negative"]
    rows = []
    for i, (dice, kind) in enumerate(zip(dices, types)):
        row = {"case_id": f"CS{i + 1}", "case_type": kind, "dice": dice, "iou": None if dice is None else dice * 0.8,
               "hd95": 1.5 * i, "distance_unit": "mm", "true_volume": 100.0 + i, "pred_volume": 90.0 + 2 * i,
               "volume_unit": "mm3", "n_true_lesions": 0 if kind == "true_negative" else 1,
               "n_detected": 1 if kind == "detected" else 0, "n_pred_components": 1, "n_missed": int(kind == "missed"),
               "n_false_positive_components": 0, "true_voxels": 0 if kind == "true_negative" else 50,
               "pred_volume_mm3": 90.0 + 2 * i, "true_volume_mm3": 100.0 + i, "pred_length_mm": 6.0 + i,
               "true_length_mm": 7.0 + i, "pred_ncct_mean_hu": 55.0, "true_ncct_mean_hu": 56.0,
               "pred_pervious": bool(i % 2), "uncertainty_score": 0.01 * (6 - i)}
        if kind == "unlabeled":
            row = {k: v for k, v in row.items() if not k.startswith(("true_", "n_true", "n_detected", "n_missed"))}
        rows.append(row)
    rows.append({"case_id": "CS<b>9&", "case_type": "detected", "dice": 0.5})      # hostile name: escaped
    summary = build_summary(rows, n_resamples=200, seed=0, meta={"run": "20240101-000000", "threshold": 0.5})
    overlays = {r["case_id"]: _png(tmp_path / f"ov{i}.png", 20 * i) for i, r in enumerate(rows)}
    images = {"overlays": overlays, "Training curves": _png(tmp_path / "curves.png", 200),
              "Bland-Altman": [_png(tmp_path / "ba_volume.png", 120), _png(tmp_path / "ba_length.png", 140)],
              "Uncertainty vs Dice": tmp_path / "missing.png"}
    agreement = {"volume_mm3": {"n": 5, "pearson_r": 0.9, "spearman_rho": 0.8, "icc_2_1": 0.85, "mean_diff": -5.0,
                                "loa_low": -20.0, "loa_high": 10.0}}
    ranking = {"n": 5, "spearman_rho": -0.7, "p_value": 0.19}
    return summary, rows, images, agreement, ranking


def test_report_is_self_contained_and_lists_every_case(tmp_path):
    summary, rows, images, agreement, ranking = _inputs(tmp_path)
    out = write_html_report(tmp_path / "Testing", summary, rows, images, agreement=agreement,
                            uncertainty_ranking=ranking)
    assert out.name == "report.html"
    text = out.read_text(encoding="utf-8")
    page = _parse(text)
    # no network: every URL-bearing attribute is an embedded image or an in-page anchor
    for tag, attrs in page.tags:
        assert tag not in ("link", "iframe", "object", "embed", "base")
        for name, value in attrs.items():
            if name in URL_ATTRS:
                assert value.startswith(("data:image/png;base64,", "#")), (tag, name, value[:60])
    assert not re.search(r"(?i)https?://|ftp://|@import|url\(", text)
    assert all(tag != "script" or "src" not in attrs for tag, attrs in page.tags)
    # every case is a table row and has its overlay, embedded
    ids = [r["case_id"] for r in rows]
    assert [row[0] for row in page.rows] == ids
    anchors = {attrs.get("id") for _, attrs in page.tags}
    imgs = [attrs for tag, attrs in page.tags if tag == "img"]
    assert len(imgs) == len(rows) + 3              # overlays, curves, 2 Bland-Altman (the missing one is a note)
    for case in ids:
        assert "case-" + re.sub(r"[^\w\-]", "_", case) in anchors
    assert "(image missing: missing.png)" in text
    assert "<b>9" not in text and "CS&lt;b&gt;9&amp;" in text
    # table columns: metrics, detection, biomarkers with units, uncertainty
    header = page.header[0]
    for label in ("Dice", "HD95", "Detected", "FP components", "pred. volume (mm³)", "true length (mm)",
                  "pred. ncct mean (HU)", "Uncertainty", "pred. pervious"):
        assert any(h.startswith(label) for h in header), (label, header)
    # summary with its bootstrap CI, detection and agreement
    dice = summary["metrics"]["dice"]
    assert f"[{fmt(dice['ci_low'])}, {fmt(dice['ci_high'])}]" in text
    assert "Case sensitivity" in text and "ICC(2,1)" in text and "<b>-0.7</b>" in text
    missing_row = page.rows[ids.index("CS3")]
    assert missing_row[header.index("Dice")] == "n/a"


def test_report_without_optional_parts(tmp_path):
    out = write_html_report(tmp_path, {}, [{"case_id": "CS1", "dice": 0.7}])
    page = _parse(out.read_text(encoding="utf-8"))
    assert page.rows == [["CS1", "0.7"]]
    assert not any(tag == "img" for tag, _ in page.tags)


def test_report_in_headless_chromium(tmp_path):
    """Loads without console errors, runs its script, sorts by #sort=-dice, shows every case; screenshot."""
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium binary found (apt-get install chromium, or set CHROMIUM_BIN); "
                    "the browser rendering of report.html is not tested here")
    summary, rows, images, agreement, ranking = _inputs(tmp_path)
    out = write_html_report(tmp_path / "Testing", summary, rows, images, agreement=agreement,
                            uncertainty_ranking=ranking)
    shot = tmp_path / "report.png"
    dom, errors = render_with_chromium(out, screenshot=shot, url_suffix="#sort=-dice", window_size=(1200, 900))
    assert errors == []
    assert 'data-report-ready="1"' in dom
    page = _parse(dom)
    shown = [row[0] for row in page.rows]
    assert sorted(shown) == sorted(r["case_id"] for r in rows)
    by_dice = sorted((r for r in rows if r.get("dice") is not None), key=lambda r: -r["dice"])
    assert shown[:len(by_dice)] == [r["case_id"] for r in by_dice]       # descending, n/a last
    assert shown[-1] == "CS3"
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (900, 1200) and img.std() > 5
    # the console check is not vacuous: a page with a script error is caught
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>notDefinedAnywhere();</script></body></html>")
    _, bad_errors = render_with_chromium(bad)
    assert any("notDefinedAnywhere" in e for e in bad_errors)
