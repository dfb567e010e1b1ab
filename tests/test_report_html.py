"""report.html: one self-contained file that a real browser renders, plots and gate table included."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import PASSING_GATES
from ltcompress.report_html import render
from ltcompress.report_plots import COLORS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _browser(*args: str) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        pytest.fail("headless Chromium missing: bash scripts/setup.sh --tests installs it (Debian package chromium)")
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


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
        rgb = np.array([int(COLORS[stage][i : i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(pixels.astype(int) - rgb).sum(1) < 30).sum() > 200, stage
    assert (np.abs(pixels.astype(int) - [0x1A, 0x7F, 0x37]).sum(1) < 30).sum() > 50  # the green PASS verdicts


@pytest.mark.slow
def test_report_names_provenance(passed_run):
    run, _ = passed_run
    rep = json.loads((run / "report.json").read_text())
    html = (run / "report.html").read_text()
    for needle in (
        rep["teacher"]["weights_sha256"],
        rep["artifacts"]["onnx_sha256"],
        rep["artifacts"]["int8_sha256"],
        rep["environment"]["versions"]["torch"],
        "int8.class[Ankle boot]",
        "PASSED",
    ):
        assert needle in html, needle


def _report(names: list[str], flips: dict | None = None) -> dict:
    """A small report.json of two classes, as the page reads it."""
    stage = {
        "overall": 0.5,
        "balanced": 0.5,
        "many": 0.5,
        "medium": None,
        "few": 0.5,
        "worst": 0.0,
        "worst_class": names[0],
        "per_class": {names[0]: 0.0, names[1]: 1.0},
    }
    return {
        "run": {"name": "x", "dir": "/tmp/x", "finished": "now", "timings_s": {}},
        "passed": False,
        "gates": [
            {
                "gate": "class[<b>] > 0",
                "subject": "fp32.class[<b>]",
                "op": ">",
                "threshold": 0,
                "value": None,
                "passed": False,
            }
        ],
        "stages": {"student": stage, "fp32": {**stage, "agreement_with_student": 1.0}},
        "parity": {"fp32": {"ok": True, "max_abs_logit_diff": 0.0, "top1_agreement": 1.0}},
        "flips": flips or {},
        "data": {
            "dataset": "imagefolder",
            "class_names": names,
            "class_counts": [50, 5],
            "train_size": 55,
            "test_size": 4,
            "shot_groups": {"many": [], "medium": [names[0]], "few": [names[1]]},
            "shot_thresholds": {"many_above": 100, "few_below": 20},
        },
        "method": {"name": "ce", "status": "exact"},
        "teacher": None,
        "config": {"resolved": {"student_arch": "s"}},
        "artifacts": {},
        "environment": {"device": "cpu", "cpu": "x86_64", "cpu_flags": [], "versions": {"torch": "2"}},
        "command": None,
    }


def _svg_texts(html: str) -> list[str]:
    import base64

    texts = []
    for uri in re.findall(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", html):
        texts += re.findall(r"<text[^>]*>([^<]*)</text>", base64.b64decode(uri).decode())
    return texts


def test_class_names_and_gates_are_escaped():
    names = ["<script>alert(1)</script>", "b&c"]
    html = render(_report(names))
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "class[&lt;b&gt;]" in html and "FAILED" in html and html.count("<figure>") == 2


def test_dollar_signs_in_class_names_are_drawn_as_text_not_maths():
    """matplotlib reads `$...$` as mathtext: `a $b_$ c` used to fail the whole report after training."""
    names = ["a $b_$ c", "$lone \\$ back"]
    per_class = {names[0]: 0.25, names[1]: 0.0}
    flips = {
        "student->fp32": {"overall": 0.1, "few": 0.0, "worst": 0.25, "worst_class": names[0], "per_class": per_class}
    }
    html = render(_report(names, flips))
    assert html.count("<figure>") == 3 and "plot-missing" not in html
    svg_text = "\n".join(_svg_texts(html))
    for name in names:  # the tick labels of the flip plot hold the names literally (the SVG escapes & < >)
        assert name in svg_text


def test_a_plot_that_cannot_be_drawn_becomes_a_note(monkeypatch, caplog):
    from ltcompress import report_plots

    def broken(*args):
        raise ValueError("no room for the legend")

    monkeypatch.setattr(report_plots, "groups", broken)
    html = render(_report(["a", "b"]))
    assert html.count("<figure>") == 1 and html.count("plot-missing") == 1
    assert "This plot could not be drawn (ValueError: no room for the legend)" in html
    assert "no room for the legend" in caplog.text


def test_without_matplotlib_the_report_has_its_tables_and_says_how_to_get_plots(monkeypatch, caplog):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    html = render(_report(["a", "b"]))
    assert "<figure>" not in html and html.count('pip install "ltcompress[report]"') == 2
    assert "<table id='gates'>" in html and "ltcompress[report]" in caplog.text


def test_where_the_tail_goes_names_the_absorbing_classes():
    names = ["<big>", "b&c"]
    report = _report(names)
    lost = {
        "b&c": {
            "group": "few",
            "test_images": 4,
            "misclassified": 3,
            "lost_to": [{"class": "<big>", "images": 3, "share": 0.75}],
        }
    }
    report["tail_losses"] = {"student": lost, "fp32": lost}
    html = render(report)
    table = html[html.index("<table id='tail'>") :]
    table = table[: table.index("</table>")]
    assert "Where the tail goes" in html and table.count("<tr>") == 2  # the header and one Few class
    assert "b&amp;c" in table and "<b>75.0</b> &rarr; &lt;big&gt; 75.0" in table and "<big>" not in table
    assert "Where the tail goes" not in render(_report(names))  # reports made before it existed still render
