"""report.html: one self-contained file that a real browser renders, plots and gate table included."""
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import PASSING_GATES
from ltcompress.report_html import COLORS, render

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _browser(*args: str) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        pytest.fail("headless Chromium missing: bash scripts/setup.sh --tests installs it (Debian package chromium)")
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=5000", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_chromium_renders_plots_and_gate_table(passed_run, tmp_path):
    run, _ = passed_run
    page = run / "report.html"
    html = page.read_text()
    assert not re.search(r"(src|href)=['\"](https?:)?//", html)  # self-contained: nothing fetched
    dom = _browser("--dump-dom", page.as_uri()).stdout
    rendered = json.loads(re.search(r'data-rendered="([^"]*)"', dom)[1].replace("&quot;", '"'))
    assert rendered == {"plots": 3, "gate_rows": len(PASSING_GATES)}  # decoded, laid out, visible
    shot = tmp_path / "shot.png"
    _browser("--window-size=1200,2600", f"--screenshot={shot}", page.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    for stage in ("teacher", "student", "fp32", "int8"):  # every stage's series was drawn
        rgb = np.array([int(COLORS[stage][i:i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(pixels.astype(int) - rgb).sum(1) < 30).sum() > 200, stage
    assert (np.abs(pixels.astype(int) - [0x1a, 0x7f, 0x37]).sum(1) < 30).sum() > 50  # the green PASS verdicts


@pytest.mark.slow
def test_report_names_provenance(passed_run):
    run, _ = passed_run
    rep = json.loads((run / "report.json").read_text())
    html = (run / "report.html").read_text()
    for needle in (rep["teacher"]["weights_sha256"], rep["artifacts"]["onnx_sha256"], rep["artifacts"]["int8_sha256"],
                   rep["environment"]["versions"]["torch"], "int8.class[Ankle boot]", "PASSED"):
        assert needle in html, needle


def test_class_names_and_gates_are_escaped():
    names = ["<script>alert(1)</script>", "b&c"]
    stage = {"overall": 0.5, "balanced": 0.5, "many": 0.5, "medium": None, "few": 0.5, "worst": 0.0,
             "worst_class": names[0], "per_class": {names[0]: 0.0, names[1]: 1.0}}
    report = {"run": {"name": "x", "dir": "/tmp/x", "finished": "now", "timings_s": {}}, "passed": False,
              "gates": [{"gate": "class[<b>] > 0", "subject": "fp32.class[<b>]", "op": ">", "threshold": 0,
                         "value": None, "passed": False}],
              "stages": {"student": stage, "fp32": {**stage, "agreement_with_student": 1.0}},
              "parity": {"fp32": {"ok": True, "max_abs_logit_diff": 0.0, "top1_agreement": 1.0}}, "flips": {},
              "data": {"dataset": "imagefolder", "class_names": names, "class_counts": [50, 5], "train_size": 55,
                       "test_size": 4, "shot_groups": {"many": [], "medium": [names[0]], "few": [names[1]]},
                       "shot_thresholds": {"many_above": 100, "few_below": 20}},
              "method": {"name": "ce", "status": "exact"}, "teacher": None,
              "config": {"resolved": {"student_arch": "s"}}, "artifacts": {},
              "environment": {"device": "cpu", "cpu": "x86_64", "cpu_flags": [], "versions": {"torch": "2"}},
              "command": None}
    html = render(report)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "class[&lt;b&gt;]" in html and "FAILED" in html and html.count("<figure>") == 2
