"""Every command shown in README.md and docs/*.md runs here, so the documentation cannot drift from the tool.

Commands are taken from the code blocks (``$``-prompted lines of console blocks, bash blocks, indented blocks).
Each must match one of the handlers below, which runs it for real: `ltcompress` commands with tiny models
appended (the same options, a smaller job), the bundle runtime on real images, torchrun with two processes and
with two nodes on this machine. Benchmark scripts run up to their argument parsing (`--help`) or, for sweeps,
with `--report-only`: their full runs are the benchmarks. A new command in the docs without a handler fails.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, TINY_MODELS, cli_exit, free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = ("bash ", ".venv/bin/", "ltcompress ", "python ", "python3 ", "torchrun ", "cd bench", "HF_HUB_OFFLINE=")
TINY_ARGS = [
    "--teacher",
    TINY_MODELS["teacher"],
    "--student",
    TINY_MODELS["student"],
    "--no-progress",
    *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}")],
]


def shown_commands() -> list[tuple[str, str]]:
    """(doc name, command) for every command line in the docs' code blocks, continuation lines joined."""
    found = []
    for doc in DOCS:
        fence, lines = None, doc.read_text().splitlines()
        pending = ""
        for line in lines:
            if line.startswith("```"):
                fence = None if fence is not None else line[3:].strip()
                continue
            if fence is not None:
                text = (
                    line[2:]
                    if fence == "console" and line.startswith("$ ")
                    else (line if fence in ("bash", "sh") else "")
                )
            else:
                text = line[4:] if line.startswith("    ") and not pending else line.strip() if pending else ""
            text = pending + text.strip()
            if text.endswith("\\"):
                pending = text[:-1].rstrip() + " "
                continue
            pending = ""
            command = re.sub(r"\s+#\s.*$", "", text).strip()
            if command.startswith(PROGRAMS):
                found.append((doc.name, command))
    return found


COMMANDS = shown_commands()


def _normalise(command: str) -> tuple[str, list[str]]:
    """(working directory, argv) without the venv path, environment prefixes and `cd bench &&`."""
    cwd = "."
    command = re.sub(r"^bash scripts/setup\.sh( --tests)? && ", "", command)
    if command.startswith("cd bench && "):
        cwd, command = "bench", command[len("cd bench && ") :]
    argv = shlex.split(command)
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
        argv.pop(0)
    argv[0] = {
        "../.venv/bin/python": "python",
        ".venv/bin/python": "python",
        ".venv/bin/ltcompress": "ltcompress",
        "python3": "python",
    }.get(argv[0], argv[0])
    return cwd, argv


@pytest.fixture(scope="module")
def env(workdir):
    return {**os.environ, "LTCOMPRESS_CACHE": str(workdir / "cache"), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def list_folder(tmp_path_factory):
    """A long-tailed dataset in the list-file layout (train.txt, test.txt, names.txt) of real images."""
    from ltcompress.config import recipe_data
    from ltcompress.data.fmnist import load_fmnist_lt

    root = tmp_path_factory.mktemp("birds")
    test = load_fmnist_lt(recipe_data(n_max=10, imbalance=1, test_per_class=60), root / "cache").test
    names = ["Trouser", "Bag", "Sneaker"]
    rows = {"train": [], "test": []}
    for label, (fmnist_class, n_train) in enumerate(zip((1, 8, 7), (40, 15, 6))):
        idx = np.flatnonzero(test.labels == fmnist_class)
        for split, chosen in (("train", idx[:n_train]), ("test", idx[-20:])):
            for i in chosen:
                rel = f"images/{names[label]}/{i:05d}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(test.images[i, 0, 2:30, 2:30]).save(root / rel)
                rows[split].append(f"{rel} {label}")
    for split, lines in rows.items():
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (root / "names.txt").write_text("\n".join(names) + "\n")
    return root


def test_the_docs_show_commands_and_each_has_a_handler():
    assert len(COMMANDS) >= 15
    unhandled = [c for _, c in COMMANDS if not any(re.search(p, c) for p, _ in HANDLERS)]
    assert not unhandled, f"commands in the docs that no test runs: {unhandled}"


def tiny_args_for(args: list[str]) -> list[str]:
    """TINY_ARGS, without the subset keys an image folder does not read (setting one is exit 2)."""
    if "imagefolder" not in args:
        return TINY_ARGS
    from ltcompress.data import SUBSET_KEYS

    keep = {k: v for k, v in TINY.items() if k.removeprefix("data.") not in SUBSET_KEYS}
    return [*TINY_ARGS[:5], *[a for k, v in keep.items() for a in ("--set", f"{k}={v}")]]


def run_ltcompress(argv, ctx):
    args = argv[1:]
    if args[0] == "run":
        args = [a if a != "/data/birds" else str(ctx["list_folder"]) for a in args]
        name = f"docs-{ctx['index']}"
        resume = "--resume" in args
        if "--name" in args:
            name = args[args.index("--name") + 1]
        tiny = tiny_args_for(args)
        code = cli_exit([*args, *tiny, "--runs-dir", str(ctx["runs"]), *([] if "--name" in args else ["--name", name])])
        if resume:  # the run it continues has finished here, so the resume is refused, as documented
            assert code == 2
        else:  # tiny models may miss a documented gate: the exit code is the report's own verdict
            report = json.loads((ctx["runs"] / name / "report.json").read_text())
            assert code == (0 if report["passed"] else 5)
    elif args[0] == "verify":
        args[1] = str(ctx["passed_run"] / "bundle")
        out = ctx["tmp"] / f"verify-{ctx['index']}.json"
        code = cli_exit([*args, "--output", str(out)])
        assert code == (0 if json.loads(out.read_text())["passed"] else 5)
    else:
        assert cli_exit(args) == 0


def run_bundle_runtime(argv, ctx):
    images = ctx["tmp"] / "my_images"
    images.mkdir(exist_ok=True)
    for i in range(3):
        Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(images / f"{i}.png")
    runtime = ctx["passed_run"] / "bundle" / "export" / "runtime.py"
    out = ctx["tmp"] / "predictions.json"
    proc = subprocess.run(
        [sys.executable, str(runtime), str(images), *argv[3:]],
        capture_output=True,
        text=True,
        cwd=ctx["tmp"],
        env=ctx["env"],
    )
    assert proc.returncode == 0 and out.is_file(), proc.stderr


def run_torchrun(argv, ctx):
    args = argv[1:]
    cut = args.index("-m")
    launcher, rest = args[:cut], [a for a in args[cut + 2 :] if a != "..."]
    name = rest[rest.index("--name") + 1] if "--name" in rest else f"node-{ctx['index']}"
    tail = [
        *rest,
        *TINY_ARGS,
        "--runs-dir",
        str(ctx["runs"]),
        *([] if "--name" in rest else ["--name", name]),
        "--set",
        "teacher.train.batch_size=16",
        "--set",
        "student.train.batch_size=16",
    ]
    if "--nnodes=2" not in launcher:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "ltcompress", *tail],
                cwd=ctx["tmp"],
                env=ctx["env"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        ]
    else:  # both nodes of the documented pair, on this machine, one process each
        port = free_port()
        procs = []
        for rank in (0, 1):
            node = [re.sub(r"^--node_rank=\d", f"--node_rank={rank}", a) for a in launcher]
            node = [re.sub(r"HOST:\d+", f"127.0.0.1:{port}", a) for a in node]
            node = [re.sub(r"^--nproc_per_node=\d+", "--nproc_per_node=1", a) for a in node]
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "torch.distributed.run", *node, "-m", "ltcompress", *tail],
                    cwd=ctx["tmp"],
                    env=ctx["env"],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    assert (ctx["runs"] / name / "report.json").is_file()


def run_bench_script(argv, ctx):
    cwd = ROOT / ctx["cwd"]
    if argv[1] == "sweep.py":
        out = ctx["tmp"] / f"sweep-{ctx['index']}"
        args = list(argv[1:])
        args[args.index("--out") + 1] = str(out)
        proc = subprocess.run(
            [sys.executable, *args, "--report-only"],
            capture_output=True,
            text=True,
            cwd=cwd,
            env={**ctx["env"], "PYTHONPATH": str(ROOT)},
        )
    else:
        proc = subprocess.run(
            [sys.executable, argv[1], "--help"],
            capture_output=True,
            text=True,
            cwd=cwd,
            env={**ctx["env"], "PYTHONPATH": str(ROOT)},
        )
    assert proc.returncode == 0, proc.stderr[-2000:]


def run_shell_script(argv, ctx):
    script = ROOT / argv[1]
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0  # needs a GPU to run: syntax only
    for referenced in re.findall(r"bench/\w+\.py", script.read_text()):
        assert (ROOT / referenced).is_file(), referenced


def run_test_suite(argv, ctx):
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/setup.sh --tests && .venv/bin/python -m pytest" in ci  # CI runs this very command


HANDLERS = [
    (
        r"^(bash scripts/setup\.sh (--tests )?&& )?(\.venv/bin/)?ltcompress (run|verify|list-methods|list-presets)\b",
        run_ltcompress,
    ),
    (r"python runs/\S+/bundle/export/runtime\.py", run_bundle_runtime),
    (r"^torchrun ", run_torchrun),
    (r"(python3?|\.venv/bin/python) (bench/)?\w+\.py|sweep\.py", run_bench_script),
    (r"^bash bench/\w+\.sh$", run_shell_script),
    (r"python -m pytest$", run_test_suite),
]


@pytest.mark.parametrize("index", range(len(COMMANDS)), ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_documented_command_runs(index, passed_run, list_folder, env, workdir, tmp_path, monkeypatch):
    doc, command = COMMANDS[index]
    monkeypatch.setenv("LTCOMPRESS_CACHE", env["LTCOMPRESS_CACHE"])
    monkeypatch.chdir(tmp_path)
    handler = next(h for p, h in HANDLERS if re.search(p, command))
    cwd, argv = _normalise(command)
    ctx = {
        "passed_run": passed_run[0],
        "list_folder": list_folder,
        "env": env,
        "tmp": tmp_path,
        "index": index,
        "runs": workdir / "doc-runs",
        "cwd": cwd,
    }
    handler(argv, ctx)
