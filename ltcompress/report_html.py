"""report.html: one self-contained page (plots embedded as SVG data URIs, no network, no scripts from outside)
that shows whether the shipped model still serves the rare classes: per-class accuracy against training-class
frequency for every stage, shot-group bars, flips, gate verdicts and the run's provenance."""

from __future__ import annotations

import base64
import html
import json
import logging
from typing import Any, Callable

import yaml

from ltcompress import report_plots as plots
from ltcompress.metrics import STAGES

log = logging.getLogger("ltcompress")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left} .pass{color:#1a7f37;font-weight:600}
.fail{color:#c62828;font-weight:600} .badge{padding:.2rem .6rem;border-radius:.3rem;color:#fff}
.badge.pass{background:#1a7f37;color:#fff} .badge.fail{background:#c62828;color:#fff}
figure{margin:1rem 0} figure img{max-width:100%} pre{background:#f7f7f7;padding:.6rem;overflow:auto;font-size:.8rem}
"""
# Runs in the browser after load: records what actually rendered (plots decoded with a size, gate rows laid out),
# so a headless-browser test can check the page, not just the file.
_PROBE = """
window.addEventListener('load', function () {
  var plots = Array.prototype.filter.call(document.querySelectorAll('figure img'),
    function (i) { return i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().height > 0; });
  var gates = Array.prototype.filter.call(document.querySelectorAll('#gates tbody tr'),
    function (r) { return r.getBoundingClientRect().height > 0; });
  document.body.setAttribute('data-rendered', JSON.stringify({plots: plots.length, gate_rows: gates.length}));
});
"""


def render(report: dict[str, Any]) -> str:
    """The whole page as one string."""
    stages = [s for s in STAGES if s in report["stages"]]
    if not plots.plotting():
        log.warning('report.html: no plots, matplotlib is not installed (pip install "ltcompress[report]")')
    data = report["data"]
    names = data["class_names"]
    title = f"ltcompress report: {report['run']['name']}"
    verdict = "pass" if report["passed"] else "fail"
    method = report["method"]
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)} <span class='badge {verdict}'>{'PASSED' if report['passed'] else 'FAILED'}</span></h1>",
        f"<p>{_e(method.get('name', ''))} ({_e(method.get('status', ''))}"
        f"{': ' + _e(method['reading']) if method.get('reading') else ''}) on {_e(data['dataset'])}: "
        f"{len(names)} classes, {data['train_size']} training / {data['test_size']} test images. "
        f"Student <code>{_e(report['config']['resolved']['student_arch'])}</code>.</p>",
        "<h2>Gates</h2>",
        _gate_table(report),
        "<h2>Accuracy by stage</h2>",
        _stage_table(report, stages),
        "<h2>Per-class accuracy against training-class frequency</h2>",
        _figure(
            lambda: plots.per_class(report, stages),
            "per-class accuracy against the number of training "
            "images of the class, one marker per class and stage; the tail is on the left",
        ),
        "<h2>Shot groups</h2>",
        _figure(
            lambda: plots.groups(report, stages),
            "mean per-class accuracy of the Many, Medium and Few groups, and balanced accuracy, per stage",
        ),
    ]
    if report.get("flips"):
        parts += [
            "<h2>Top-1 flips between stages</h2>",
            _figure(
                lambda: plots.flips(report),
                "share of each class's test images whose top-1 prediction changed between consecutive stages",
            ),
            _flip_table(report),
        ]
    if report.get("tail_losses"):
        parts += ["<h2>Where the tail goes</h2>", _tail_table(report, stages)]
    parts += ["<h2>Per class</h2>", _class_table(report, stages)]
    if report["artifacts"].get("latency_ms"):
        parts += ["<h2>Size and speed</h2>", _speed_table(report)]
    if report.get("int8_repair"):
        parts += ["<h2>INT8 repair</h2>", _repair_section(report)]
    parts += ["<h2>Provenance</h2>", _provenance(report), f"<script>{_PROBE}</script></body></html>"]
    return "\n".join(parts)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _ms(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.3f}"


def _gate_table(report: dict[str, Any]) -> str:
    rows = []
    for g in report["gates"]:
        cls = "pass" if g["passed"] else "fail"
        value = "n/a" if g["value"] is None else f"{g['value']:.4f}"
        rows.append(
            f"<tr><td class='l'><code>{_e(g['gate'])}</code></td><td class='l'>{_e(g.get('subject', ''))}</td>"
            f"<td>{value}</td><td>{_e(g['op'])} {g['threshold']:g}</td><td class='{cls}'>"
            f"{'PASS' if g['passed'] else 'FAIL'}</td></tr>"
        )
    if not rows:
        rows.append("<tr><td class='l' colspan='5'>no gates were set (add --gate 'few >= 0.6')</td></tr>")
    parity = report["parity"]["fp32"]
    return (
        "<table id='gates'><thead><tr><th class='l'>gate</th><th class='l'>measures</th><th>value</th>"
        f"<th>required</th><th>verdict</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"<p>FP32 export parity with torch: <span class='{'pass' if parity['ok'] else 'fail'}'>"
        f"{'ok' if parity['ok'] else 'FAILED'}</span> (max logit difference {parity['max_abs_logit_diff']:.2e}, "
        f"top-1 agreement {parity['top1_agreement']:.4f}).</p>"
    )


def _stage_table(report: dict[str, Any], stages: list[str]) -> str:
    cols = ("overall", "balanced", "many", "medium", "few", "worst")
    head = "".join(f"<th>{c}</th>" for c in cols)
    rows = []
    for s in stages:
        m = report["stages"][s]
        agree = m.get("agreement_with_student")
        rows.append(
            f"<tr><td class='l'>{s}</td>"
            + "".join(f"<td>{_pct(m[c])}</td>" for c in cols)
            + f"<td class='l'>{_e(m['worst_class'])}</td><td>{_pct(agree)}</td></tr>"
        )
    return (
        f"<table><thead><tr><th class='l'>stage</th>{head}<th class='l'>worst class</th>"
        f"<th>agrees with torch student</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        "<p>Accuracies in %; balanced and group accuracies are unweighted means over classes.</p>"
    )


def _class_table(report: dict[str, Any], stages: list[str]) -> str:
    data = report["data"]
    group_of = {name: g for g, members in data["shot_groups"].items() for name in members}
    head = "".join(f"<th>{s}</th>" for s in stages)
    rows = []
    for name, count in sorted(zip(data["class_names"], data["class_counts"]), key=lambda t: -t[1]):
        cells = "".join(f"<td>{_pct(report['stages'][s]['per_class'].get(name))}</td>" for s in stages)
        rows.append(
            f"<tr><td class='l'>{_e(name)}</td><td>{count}</td><td class='l'>{group_of.get(name, '')}</td>{cells}</tr>"
        )
    return (
        f"<table><thead><tr><th class='l'>class</th><th>train images</th><th class='l'>group</th>{head}</tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _tail_table(report: dict[str, Any], stages: list[str]) -> str:
    """Each Medium and Few class: the share of its test images each stage gets wrong, and the classes that take
    them (the full confusion matrices are in predictions.npz)."""
    tail = report["tail_losses"]
    shown = [s for s in stages if s in tail]
    rows = []
    for name, first in tail[shown[0]].items():
        cells = []
        for s in shown:
            lost = tail[s][name]
            total = max(lost["test_images"], 1)
            to = ", ".join(f"{_e(x['class'])} {100 * x['share']:.1f}" for x in lost["lost_to"]) or "-"
            cells.append(f"<td class='l'><b>{100 * lost['misclassified'] / total:.1f}</b> &rarr; {to}</td>")
        rows.append(f"<tr><td class='l'>{_e(name)}</td><td class='l'>{first['group']}</td>{''.join(cells)}</tr>")
    head = "".join(f"<th class='l'>{s}</th>" for s in shown)
    return (
        f"<table id='tail'><thead><tr><th class='l'>class</th><th class='l'>group</th>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table><p>Per stage: % of the class's test images misclassified "
        "&rarr; the classes that absorb most of them (% of the class's test images). Full confusion matrices: "
        "<code>predictions.npz</code>, keys <code>confusion_&lt;stage&gt;</code>.</p>"
    )


def _speed_table(report: dict[str, Any]) -> str:
    a, env = report["artifacts"], report["environment"]
    speed = a["latency_ms"]
    sizes = {"fp32": a.get("onnx_bytes"), "int8": a.get("int8_bytes")}
    rows = "".join(
        f"<tr><td class='l'>{stage}</td><td>{sizes[stage] / 1e6:.2f}</td>"
        f"<td>{speed['batch_1'][stage]:.3f}</td><td>{speed['batch_32'][stage]:.2f}</td></tr>"
        for stage in ("fp32", "int8")
        if stage in speed["batch_1"]
    )
    verdict = ""
    if "int8_worth_it" in speed:
        verdict = (
            f"<p>INT8 speed-up over FP32: {speed['batch_1']['int8_speedup']:.2f}x at batch 1, "
            f"{speed['batch_32']['int8_speedup']:.2f}x at batch 32. "
            f"<span class='{'pass' if speed['int8_worth_it'] else 'fail'}'>"
            f"{_e(speed.get('note', 'INT8 is at least 1.2x faster at both batch sizes.'))}</span></p>"
        )
    return (
        f"<table id='speed'><thead><tr><th class='l'>model</th><th>MB</th><th>batch-1 ms</th>"
        f"<th>batch-32 ms</th></tr></thead><tbody>{rows}</tbody></table>{verdict}"
        f"<p>Median ONNX Runtime CPU latency on this machine ({_e(env['cpu'])}; CPU flags "
        f"{_e(' '.join(env.get('cpu_flags', [])) or 'unknown')}); measure on the target device.</p>"
    )


def _repair_section(report: dict[str, Any]) -> str:
    """What the INT8 repair judged on (its evidence, per gated class), how sure it was of each int8 gate, which
    nodes went back to FP32 at what cost, and the test set's per-class accuracy before and after (reported,
    not decided on)."""
    r = report["int8_repair"]
    ev = r["evidence"]
    head = (
        f"<p>Evidence: {_e(ev['source'])}. A gate is acted on only when it fails with "
        f"{ev['confidence']:.0%} one-sided confidence (a bootstrap over images); with thin evidence it is left "
        f"undecided and the test set alone judges it. Before the repair:</p>{_repair_gates(r['gates_before'])}"
        f"{_evidence_classes(ev['classes'])}"
    )
    if not r["needed"]:
        return head + "<p>No int8 gate failed with confidence on the evidence: the model was left as it is.</p>"
    rows = [
        f"<tr><td class='l'>INT8 as calibrated</td><td></td><td></td><td>{r['int8_size_bytes'] / 1e6:.3f}</td>"
        f"<td></td><td>{_ms(r['int8_latency_ms'])}</td><td></td></tr>"
    ]
    for i, n in enumerate(r["nodes"], 1):
        verdicts = ", ".join(f"{_bounded(g)} {_e(g['decision'])}" for g in n["gates"])
        rows.append(
            f"<tr><td class='l'>{i}. <code>{_e(n['node'])}</code></td><td class='l'>{_e(n['op_type'])}</td>"
            f"<td>{n['damage']:.3g}</td><td>{n['size_bytes'] / 1e6:.3f}</td><td>{n['added_bytes']:+d}</td>"
            f"<td>{_ms(n['latency_ms'])}</td><td class='l'>{verdicts}</td></tr>"
        )
    stopped = f" Stopped: {_e(r['stopped'])}." if r.get("stopped") else ""
    table = (
        "<table id='repair'><thead><tr><th class='l'>back to FP32 (in order)</th><th class='l'>op</th>"
        "<th>damage alone</th><th>model MB</th><th>bytes added</th><th>batch-1 ms</th>"
        f"<th class='l'>int8 gates on the evidence</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"<p>Nodes ranked by {_e(r['ranked_by'])}; {r['trials']} trial model(s) in {r['seconds']:.0f} s "
        f"(budget {r['budget']['seconds']:g} s).{stopped}</p>"
    )
    return head + _repair_bias(r["logit_bias"]) + table + _repair_classes(report)


def _repair_bias(bias: dict[str, Any] | None) -> str:
    """The logit bias correction, tried after the nodes: the offset per class and whether it was kept."""
    if bias is None:
        return ""
    offsets = ", ".join(f"{_e(name)} {value:+.3f}" for name, value in bias["per_class"].items())
    verdict = "kept" if bias["kept"] else "not kept (it did not lower the divergence)"
    return (
        f"<p id='repair-bias'>Logit bias correction, {verdict}: class-balanced divergence from FP32 on the evidence "
        f"{bias['kl_before']:.4f} &rarr; {bias['kl_after']:.4f}; offset added to each class's logit: {offsets}.</p>"
    )


def _repair_gates(gates: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td class='l'><code>{_e(g['gate'])}</code></td><td class='l'><code>{_e(g['judged_as'])}</code></td>"
        f"<td>{g['images']}</td><td>{_bounded(g)}</td><td class='l'>{_e(g['decision'])}</td></tr>"
        for g in gates
    )
    return (
        "<table id='repair-gates'><thead><tr><th class='l'>gate</th><th class='l'>judged on the evidence as</th>"
        f"<th>images</th><th>value (bounds)</th><th class='l'>decision</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _bounded(gate: dict[str, Any]) -> str:
    """A gate's value on the evidence and its one-sided bounds."""
    if gate["value"] is None:
        return "n/a"
    bounds = "" if gate.get("low") is None else f" ({gate['low']:.4f} to {gate['high']:.4f})"
    return f"{gate['value']:.4f}{bounds}"


def _evidence_classes(classes: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td class='l'>{_e(c['name'])}</td><td>{c['images']}</td><td>{c['views']}</td><td>{_pct(c['fp32'])}</td>"
        f"<td>{_pct(c['int8_before'])}</td><td>{_pct(c['int8_after'])}</td></tr>"
        for c in classes
    )
    return (
        "<table id='repair-evidence'><thead><tr><th class='l'>gated class</th><th>images</th><th>views</th>"
        f"<th>fp32</th><th>int8</th><th>int8 repaired</th></tr></thead><tbody>{rows}</tbody></table>"
        "<p>Top-1 in % on the evidence's views.</p>"
    )


def _repair_classes(report: dict[str, Any]) -> str:
    before, after = report["int8_repair"].get("test_before"), report["stages"].get("int8")
    if not before or not after:
        return ""
    data = report["data"]
    group_of = {name: g for g, members in data["shot_groups"].items() for name in members}
    fp32 = report["stages"]["fp32"]["per_class"]
    rows = [
        f"<tr><td class='l'>{_e(name)}</td><td class='l'>{group_of.get(name, '')}</td><td>{_pct(fp32.get(name))}"
        f"</td><td>{_pct(before['per_class'].get(name))}</td><td>{_pct(after['per_class'].get(name))}</td></tr>"
        for name in data["class_names"]
    ]
    rows += [
        f"<tr><td class='l'><b>{key}</b></td><td></td><td>{_pct(report['stages']['fp32'][key])}</td>"
        f"<td>{_pct(before[key])}</td><td>{_pct(after[key])}</td></tr>"
        for key in ("balanced", "few", "worst")
    ]
    return (
        "<table id='repair-classes'><thead><tr><th class='l'>class</th><th class='l'>group</th><th>fp32</th>"
        f"<th>int8 before repair</th><th>int8 repaired</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        "<p>Test-set accuracy in %, measured after the repair for this table only: no decision used it.</p>"
    )


def _flip_table(report: dict[str, Any]) -> str:
    rows = [
        f"<tr><td class='l'>{_e(pair)}</td><td>{_pct(f['overall'])}</td><td>{_pct(f['few'])}</td>"
        f"<td>{_pct(f['worst'])}</td><td class='l'>{_e(f['worst_class'])}</td></tr>"
        for pair, f in report["flips"].items()
    ]
    return (
        "<table><thead><tr><th class='l'>stages</th><th>flipped %</th><th>Few classes %</th>"
        f"<th>most-flipped class %</th><th class='l'>class</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _rebalanced(teacher: dict[str, Any]) -> str:
    """How the teacher's classifier was re-balanced after training, when it was."""
    r = teacher.get("rebalance")
    if not r:
        return ""
    params = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in r["params"].items())
    return f", classifier re-balanced: {r['method']} ({params}; {r['source']})"


def _provenance(report: dict[str, Any]) -> str:
    teacher = report.get("teacher") or {}
    env = report["environment"]
    items = [
        ("run directory", report["run"]["dir"]),
        ("finished", report["run"]["finished"]),
        ("recipe", f"{report['recipe']['name']} ({report['recipe']['why']})" if report.get("recipe") else "n/a"),
        *[("fitted", line) for line in (report.get("recipe") or {}).get("fitted", [])],
        ("teacher", f"{teacher.get('arch', 'none')} from {teacher.get('source', 'n/a')}{_rebalanced(teacher)}"),
        ("teacher sha256", teacher.get("weights_sha256", "n/a")),
        ("student ONNX sha256", report["artifacts"].get("onnx_sha256", "n/a")),
        ("INT8 ONNX sha256", report["artifacts"].get("int8_sha256", "not built")),
        ("device", env["device"]),
        ("CPU", f"{env['cpu']} ({' '.join(env.get('cpu_flags', []))})"),
        ("versions", ", ".join(f"{k} {v}" for k, v in env["versions"].items())),
        ("command", " ".join(report["command"]) if report.get("command") else "Python API"),
    ]
    rows = "".join(f"<tr><th class='l'>{_e(k)}</th><td class='l'>{_e(v)}</td></tr>" for k, v in items)
    config = yaml.safe_dump(report["config"], sort_keys=False)
    return (
        f"<table>{rows}</table><details><summary>resolved configuration</summary><pre>{_e(config)}</pre>"
        f"</details><details><summary>timings (s)</summary><pre>{_e(json.dumps(report['run']['timings_s']))}"
        f"</pre></details><details><summary>estimate before training (s)</summary>"
        f"<pre>{_e(json.dumps(report.get('estimate')))}</pre></details>"
    )


def _figure(draw: Callable[[], bytes], caption: str) -> str:
    """The plot `draw` makes, embedded; or, when it cannot be drawn, a note in its place: a plot is never
    worth failing a run whose model, verdict and tables are all there."""
    if not plots.plotting():
        return (
            "<p class='plot-missing'>Plots need matplotlib, which is not installed: <code>pip install "
            '"ltcompress[report]"</code>. The tables on this page hold the same numbers.</p>'
        )
    try:
        svg = draw()
    except Exception as exc:  # noqa: BLE001 - any plotting failure becomes a note, never a failed run
        import matplotlib.pyplot as plt

        plt.close("all")
        log.warning(
            "report.html: a plot could not be drawn (%s: %s); the report says so in its place", type(exc).__name__, exc
        )
        return (
            f"<p class='fail plot-missing'>This plot could not be drawn ({_e(type(exc).__name__)}: "
            f"{_e(exc)}). The tables on this page hold the same numbers.</p>"
        )
    uri = "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")
    return f"<figure><img src='{uri}' alt='{_e(caption)}'><figcaption>{_e(caption)}</figcaption></figure>"
