"""DistributedDataParallel on CPU with gloo: two processes, the same global batch as one."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from conftest import free_port, tiny_cli_args, tiny_distill
from ltcompress import dist

# Accuracy of a 2-process run against a 1-process run with the same global batch, on the 300 test images of the
# tiny configuration. Not bit-identical: BatchNorm sees per-rank batches (half the size) and each rank augments
# with its own generator.
TOLERANCE = 0.10


def _worker(rank: int, world: int, port: int, out: str, method_name: str, params: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        student, method, result = tiny_distill(method_name, params=params)
        torch.save(
            {"student": student.state_dict(), "method": method.state_dict(), "history": result.history},
            os.path.join(out, f"rank{rank}.pt"),
        )
    finally:
        torch_dist.destroy_process_group()


# krdistill with its feature term: a method with parameters of its own (the projector)
@pytest.mark.parametrize("method_name, params", [("bkd", {}), ("krdistill", {"feature_term": True})])
def test_two_gloo_ranks_end_with_identical_parameters(method_name, params, tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), method_name, params), nprocs=2)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for part in ("student", "method"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part

    def reduced(run):  # epoch loss and accuracy are summed over ranks, so both report the global figures
        return [(h["loss"], h["train_acc"]) for h in run["history"]]

    assert reduced(a) == reduced(b)
    assert not dist.active()  # the test process itself never joined a group


@pytest.mark.slow
def test_torchrun_cli_matches_one_process_within_tolerance(tmp_path):
    env = {**os.environ, "LTCOMPRESS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}

    def run(name, *launcher):
        args = [
            *tiny_cli_args(method="bkd", name=name, runs_dir=str(tmp_path / "runs"), epochs="4"),
            "--set",
            "teacher.train.batch_size=16",
            "--set",
            "student.train.batch_size=16",
        ]
        proc = subprocess.run([*launcher, "-m", "ltcompress", "run", *args], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((tmp_path / "runs" / name / "report.json").read_text()), proc

    # the two processes train the teacher too (DDP); the one-process run then distills from that cached teacher
    two, proc = run("two", sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    one, _ = run("one", sys.executable)
    assert proc.stdout.count("report:") == 1  # rank 0 alone prints the summary and writes the run
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["one", "two"]
    lines = (tmp_path / "runs" / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["stage"] for x in lines] == ["teacher"] * 2 + ["student"] * 4  # per epoch, not per rank
    assert one["teacher"]["source"] == "cache" and two["teacher"]["weights_sha256"] == one["teacher"]["weights_sha256"]
    for key in ("overall", "balanced"):
        assert abs(one["stages"]["fp32"][key] - two["stages"]["fp32"][key]) <= TOLERANCE, key
