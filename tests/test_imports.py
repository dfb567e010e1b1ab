"""The package's imports follow the pipeline: no module imports one that (directly or not) imports it back, and
no module imports one from a higher layer. The graph is read from the source (tests/import_graph.py); imports
under ``if TYPE_CHECKING:`` count too: a type a module names is part of its contract."""

from __future__ import annotations

import import_graph as graph

# lowest first: a module may import from its own layer and the ones before it; ``x.*`` is package x and its modules
LAYERS: list[list[str]] = [
    [  # foundations: no model, no data, no stage
        "ltcompress.errors",
        "ltcompress.layout",
        "ltcompress.edge.*",
        "ltcompress.presets.*",
        "ltcompress.registry",
        "ltcompress.values",
        "ltcompress.environment",
        "ltcompress.progress",
        "ltcompress.metrics",
        "ltcompress.gates",
        "ltcompress.results",
        "ltcompress.dist",
        "ltcompress.hub",
        "ltcompress.config_checks",
        "ltcompress.config",
        "ltcompress.rundir",
        "ltcompress.role",
        "ltcompress.checkpoint",
        "ltcompress.tracking",
    ],
    ["ltcompress.data.*"],
    ["ltcompress.models", "ltcompress.methods.*"],
    ["ltcompress.inference", "ltcompress.metadata"],  # running a model over the data; what exports say
    ["ltcompress.train_state", "ltcompress.logit_cache", "ltcompress.loop", "ltcompress.rebalance"],  # training
    ["ltcompress.plan"],  # the frozen plan every stage reads
    ["ltcompress.teacher"],  # the stages, in pipeline order
    ["ltcompress.distill"],
    ["ltcompress.onnx_export", "ltcompress.evidence", "ltcompress.repair", "ltcompress.export_stage"],
    ["ltcompress.verify"],
    ["ltcompress.report_plots", "ltcompress.report_html", "ltcompress.report", "ltcompress.bundle"],
    ["ltcompress.recipe", "ltcompress.estimate", "ltcompress.prepare"],  # the steps that make a plan
    [
        "ltcompress.options",
        "ltcompress.config_docs",
        "ltcompress.api",
        "ltcompress.recorded",
        "ltcompress.exported",
        "ltcompress",
    ],  # the API
    ["ltcompress.console", "ltcompress.cli", "ltcompress.__main__"],  # the command line
]


def test_every_module_has_a_layer_and_every_layer_entry_a_module():
    mods = graph.modules()
    unplaced = [name for name in mods if graph.layer_of(name, LAYERS) is None]
    assert not unplaced, f"place each of these modules in a layer of tests/test_imports.py LAYERS: {unplaced}"
    stale = [entry for group in LAYERS for entry in group if not any(graph.layer_of(m, [[entry]]) == 0 for m in mods)]
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


def test_no_import_circle():
    rings = graph.cycles(graph.edges(graph.modules(), typing=True))
    assert not rings, "import circles:\n" + "\n".join(" -> ".join(ring) for ring in rings)


def test_no_module_imports_from_a_higher_layer():
    up = graph.upward(graph.edges(graph.modules(), typing=True), LAYERS)
    assert not up, "imports running up the layers of tests/test_imports.py LAYERS:\n" + "\n".join(
        f"{src} -> {dst}" for src, dst in up
    )


def test_the_analyser_sees_function_local_imports_and_skips_type_checking_ones(tmp_path):
    (tmp_path / "ltcompress").mkdir()
    (tmp_path / "ltcompress" / "__init__.py").write_text("")
    (tmp_path / "ltcompress" / "b.py").write_text("")
    (tmp_path / "ltcompress" / "c.py").write_text("")
    (tmp_path / "ltcompress" / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ltcompress.c import C\n"
        "def f() -> None:\n    from . import b\n"
    )
    mods = graph.modules(tmp_path)
    assert graph.edges(mods) == {("ltcompress.a", "ltcompress.b")}
    assert graph.edges(mods, typing=True) == {("ltcompress.a", "ltcompress.b"), ("ltcompress.a", "ltcompress.c")}
    assert graph.cycles({("x", "y"), ("y", "z"), ("z", "x"), ("y", "x")}) == [["x", "y", "x"], ["x", "y", "z", "x"]]


def test_the_public_surface_imports():
    """Every name `ltcompress.__all__` promises is there (a module move must keep it importable)."""
    import ltcompress

    missing = [name for name in ltcompress.__all__ if not hasattr(ltcompress, name)]
    assert not missing, f"ltcompress.__all__ names what the package does not have: {missing}"
