"""report.html's plots, drawn with matplotlib (the `report` extra) as SVG: per-class accuracy against training
images, shot-group bars and flips. Colours and markers are one per stage on every plot."""

from __future__ import annotations

import io
from typing import Any

COLORS = {"teacher": "#7f7f7f", "student": "#1f77b4", "fp32": "#2ca02c", "int8": "#d62728"}
MARKERS = {"teacher": "s", "student": "o", "fp32": "^", "int8": "v"}
GROUPS = ("many", "medium", "few")


def plotting() -> bool:
    """Whether report.html can have plots: matplotlib is the `report` extra (pip install "ltcompress[report]")."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _plain(text: str) -> str:
    """Text from the data (class names) as matplotlib shows it literally: an unescaped ``$`` pair would be
    read as mathtext, and a lone ``$...`` fails to parse."""
    return text.replace("$", r"\$")


def _svg(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot's import
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # text stays text: small files, selectable labels
    return plt


def per_class(report: dict[str, Any], stages: list[str]) -> bytes:
    """Per-class test accuracy against the class's training images, one marker per stage."""
    plt = _pyplot()
    data = report["data"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for s in stages:
        acc = [report["stages"][s]["per_class"].get(n) for n in data["class_names"]]
        pts = [(c, 100 * a) for c, a in zip(data["class_counts"], acc) if a is not None]
        ax.scatter(
            [p[0] for p in pts], [p[1] for p in pts], label=s, color=COLORS[s], marker=MARKERS[s], alpha=0.8, s=36
        )
    thresholds = data.get("shot_thresholds", {})
    for key in ("few_below", "many_above"):
        if key in thresholds:
            ax.axvline(thresholds[key], color="#bbbbbb", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("test accuracy of the class (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(title="stage", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _svg(fig)


def groups(report: dict[str, Any], stages: list[str]) -> bytes:
    """Many / Medium / Few / balanced accuracy, one bar per stage."""
    plt = _pyplot()
    keys = [g for g in GROUPS if report["stages"][stages[0]].get(g) is not None] + ["balanced"]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / len(stages)
    for i, s in enumerate(stages):
        vals = [100 * (report["stages"][s][k] or 0.0) for k in keys]
        xs = [j + (i - (len(stages) - 1) / 2) * width for j in range(len(keys))]
        bars = ax.bar(xs, vals, width, label=s, color=COLORS[s])
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(keys)), [k.capitalize() for k in keys])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(ncols=len(stages), loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    return _svg(fig)


def flips(report: dict[str, Any]) -> bytes:
    """Per-class top-1 flip rates between consecutive stages, most training images first."""
    plt = _pyplot()
    data = report["data"]
    order = sorted(range(len(data["class_names"])), key=lambda i: -data["class_counts"][i])
    names = [data["class_names"][i] for i in order]
    pairs = list(report["flips"])
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / len(pairs)
    for i, pair in enumerate(pairs):
        vals = [100 * (report["flips"][pair]["per_class"].get(n) or 0.0) for n in names]
        xs = [j + (i - (len(pairs) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, vals, width, label=pair, color=COLORS[pair.split("->")[1]])
    ax.set_xticks(range(len(names)), [_plain(n) for n in names], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("top-1 flipped (%)")
    ax.set_xlabel("class, most training images first")
    ax.legend(loc="upper left")
    return _svg(fig)
