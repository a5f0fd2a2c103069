"""benchmarks/train_memory.py runs on CPU with --tiny and both paths agree on the loss."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "train_memory.py"


def test_train_memory_tiny_runs_on_cpu():
    p = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--tiny",
            "--context",
            "128",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--find-max",
            "--find-max-limit",
            "256",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["context"] == 128 and not r["ours"]["oom"] and not r["common"]["oom"]
    assert r["ours"]["tokens_per_s"] > 0 and r["common"]["tokens_per_s"] > 0 and r["speed_ratio"] > 0
    assert r["first_loss_diff"] < 1e-4  # the two output paths compute the same loss
    assert r["find_max"]["longest_context"] == 256 and [t["context"] for t in r["find_max"]["tries"]] == [128, 256]
