"""Methods from other packages: an installed distribution's `ltcompress.methods` entry point reaches the CLI
(list-methods, run --method) without a launcher; a broken plugin is a warning, not a crash."""

import json
import os
import subprocess
import sys

import pytest

from conftest import tiny_cli_args

pytestmark = pytest.mark.slow

PYPROJECT = """[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "ltc-bskd"
version = "0.1"

[project.entry-points."ltcompress.methods"]
bskd = "ltc_bskd"
broken = "ltc_broken:register"

[tool.setuptools]
py-modules = ["ltc_bskd", "ltc_broken"]
"""

PLUGIN = '''"""Balanced Softmax CE plus KD to a Balanced Softmax teacher, from outside ltcompress."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ltcompress.methods import register_method
from ltcompress.methods.base import Method, StepInputs, tempered_kl


@dataclass(frozen=True)
class BSKDParams:
    T: float = 2.0


class BSKD(Method):
    Params = BSKDParams
    teacher_method = "bsce"

    def forward(self, step: StepInputs) -> torch.Tensor:
        zs = step.student_logits.float()
        log_n = self.class_counts.log()
        log_q = F.log_softmax(step.teacher_logits.float() / self.params.T, dim=1)
        return F.cross_entropy(zs + log_n[None, :], step.targets) + tempered_kl(zs, log_q, self.params.T)


register_method("bskd", BSKD, summary="Balanced Softmax CE plus KD (a plugin)", source="a test")
'''


def test_an_installed_plugin_method_reaches_the_cli(tmp_path):
    src, site = tmp_path / "src", tmp_path / "site"
    src.mkdir()
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "ltc_bskd.py").write_text(PLUGIN)
    (src / "ltc_broken.py").write_text("def register():\n    raise RuntimeError('this plugin is broken')\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(src),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    env = {**os.environ, "PYTHONPATH": str(site), "LTCOMPRESS_CACHE": str(tmp_path / "cache")}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "ltcompress", *args], capture_output=True, text=True, env=env, cwd=tmp_path
        )

    listed = cli("list-methods", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["bskd"]["summary"] == "Balanced Softmax CE plus KD (a plugin)" and "krdistill" in rows
    assert "plugin 'broken'" in listed.stderr and "this plugin is broken" in listed.stderr
    run = cli("run", *tiny_cli_args(method="bskd", name="p", runs_dir=str(tmp_path / "runs")), "--method-arg", "T=3")
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "runs" / "p" / "report.json").read_text())
    assert report["method"]["name"] == "bskd" and report["method"]["params"] == {"T": 3.0}
    assert report["teacher"]["loss"] == "bsce"
