"""benchmarks/schedule_sim.py replays a finished study's plan with its measured stage seconds: on
one process every rule takes the sum of them, on as many processes as nodes the longest chain."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import yaml
from rich.console import Console

import study_helpers as H
from needlework.study.config import from_dict
from needlework.study.engine import build_plan, by_priority, run_study

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "schedule_sim.py"


def _sim():
    spec = importlib.util.spec_from_file_location("schedule_sim", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_replay_gives_the_sum_on_one_process_and_the_longest_chain_on_many(tmp_path):
    cfg = H.fake_config()
    run_study(from_dict(cfg), tmp_path / "s", stages=H.slow_stages(), console=Console(file=io.StringIO()), report=False)
    sim, nodes = _sim(), build_plan(from_dict(cfg))
    seconds = sim.measured(tmp_path / "s", 0.0, float("inf"))
    assert {(n.stage, n.label) for n in nodes} == set(seconds)  # every node ran and was found
    slept = 0.4 * sum(n.stage in ("train", "evaluate") for n in nodes)
    assert sum(seconds.values()) >= slept  # the slow stages' sleeps are in there

    chain: dict[int, float] = {}
    for n in nodes:  # dependency order: the longest chain of measured seconds ending at n
        chain[id(n)] = seconds[(n.stage, n.label)] + max((chain[id(d)] for d in n.deps.values()), default=0.0)
    for order in (nodes, by_priority(nodes), list(reversed(by_priority(nodes)))):
        assert abs(sim.simulate(nodes, seconds, 1, order) - sum(seconds.values())) < 1e-9
        assert abs(sim.simulate(nodes, seconds, len(nodes), order) - max(chain.values())) < 1e-9
        two = sim.simulate(nodes, seconds, 2, order)
        assert max(chain.values()) - 1e-9 <= two <= sum(seconds.values()) + 1e-9

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--config", str(path), "--study", str(tmp_path / "s"), "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["no_duration"] == [] and r["nodes"] == len(nodes)
    assert all(abs(w - sum(seconds.values())) <= 0.05 + 1e-9 for w in r["wall_s"].values())
