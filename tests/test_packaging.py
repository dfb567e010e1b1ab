"""A plain, non-editable `pip install .` ships presets/ and export/ inside the package namespace."""
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def test_non_editable_install_has_presets_and_edge_runtime(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "bench-runs", "build", "*.egg-info",
                                                             "__pycache__", ".pytest_cache"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    # on top of the test venv (torch and friends, 5.7 GB, are not installed twice): its site-packages go on
    # sys.path after the new venv's own, without running its .pth files (so its editable ltcompress stays out)
    own = subprocess.run([py, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                         text=True, check=True).stdout.strip()
    Path(own, "test_venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([py, "-m", "pip", "install", "--quiet", "--no-deps", str(src)], check=True, cwd=tmp_path)
    shutil.rmtree(src)  # nothing may still point at the source tree
    probe = ("import importlib.util, ltcompress\n"
             "from ltcompress.config import bundled_dir, list_presets\n"
             "from ltcompress.edge import runtime\n"
             "print(ltcompress.__file__)\n"
             "print(runtime.__file__)\n"
             "print(sorted(p.name for p in bundled_dir('edge', 'export').iterdir()))\n"
             "print(list_presets())\n"
             "print(importlib.util.find_spec('presets'), importlib.util.find_spec('export'))\n")
    out = subprocess.run([py, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    lines = out.splitlines()
    assert lines[0].startswith(str(venv)) and lines[1].startswith(str(venv))
    assert "runtime.py" in lines[2] and "BUNDLE_README.md" in lines[2]
    assert "'fmnist-lt'" in lines[3] and "'fmnist-lt-bench'" in lines[3]
    assert lines[4] == "None None"  # never installed as top-level modules
    listing = subprocess.run([str(venv / "bin" / "ltcompress"), "list-presets"], capture_output=True, text=True,
                             check=True, cwd=tmp_path).stdout
    assert "fmnist-lt-bench" in listing
    methods = subprocess.run([py, "-m", "ltcompress", "list-methods"], capture_output=True, text=True, check=True,
                             cwd=tmp_path).stdout
    assert "bkd" in methods and "kd" in methods
