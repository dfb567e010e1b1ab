"""A clone runs from its root without being installed in place: ``python -m ltcompress`` (and ``torchrun -m
ltcompress``) with a non-editable install, or none, imports the tree's ltcompress/, and its export/ and
presets/ must serve as ltcompress.edge and ltcompress.presets there too (the wheel test covers installs)."""

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _tree(tmp_path: Path) -> Path:
    """A copy of what a clone holds of the package, so nothing can come from this checkout by accident."""
    tree = tmp_path / "clone"
    for folder in ("ltcompress", "export", "presets"):
        shutil.copytree(REPO / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tree)
    return tree


def _python(tree: Path, *args: str) -> subprocess.CompletedProcess:
    """Python in `tree` with this venv's packages but without site processing: no .pth file runs, so an
    editable install's finder (this checkout's, or any other's) is not there."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(site.getsitepackages())
    return subprocess.run([sys.executable, "-S", *args], capture_output=True, text=True, cwd=tree, env=env)


def test_the_source_tree_serves_export_and_presets_as_subpackages(tmp_path):
    tree = _tree(tmp_path)
    where = _python(
        tree,
        "-c",
        "import ltcompress.data.core, ltcompress.edge.runtime as r\n"
        "from ltcompress.values import bundled_dir\n"
        "print(ltcompress.__file__, r.__file__, ltcompress.edge.runtime.__file__, bundled_dir('presets'))",
    )
    assert where.returncode == 0, where.stderr
    package, runtime, attribute, presets = where.stdout.split()
    assert Path(package) == tree / "ltcompress" / "__init__.py"
    assert Path(runtime) == Path(attribute) == tree / "export" / "runtime.py"
    assert Path(presets) == tree / "presets"


def test_python_m_ltcompress_runs_from_the_root_of_a_clone(tmp_path):
    listed = _python(_tree(tmp_path), "-m", "ltcompress", "list-presets")
    assert listed.returncode == 0, listed.stderr
    assert "fmnist-lt" in listed.stdout
