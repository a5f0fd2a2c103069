"""How long a finished study would have taken under another stage order: replays its plan with
the stage durations it measured (each node's `done.json`) on N processes, taking ready nodes by
each rule, and prints the simulated wall time of each (stage seconds only: no process start-up,
no report; stages are assumed to last what they lasted, though sharing the GPU differently
changes that somewhat). Replaying the rule the study ran under checks the model against the
measured wall time; the others are estimates, not measurements.

  python benchmarks/schedule_sim.py --config configs/gpu-mdqa.yaml --study runs/speed/fast --workers 4

Rules: `plan` (plan order), `interventions` (knockout, then patching, then plan order: the engine
before the critical-path rule), `critical` (the engine's: `study.engine.by_priority`).
`--since`/`--until` (Unix times) pick one run's nodes from a folder that several runs wrote.
"""

from __future__ import annotations

import argparse
import heapq
import json
from pathlib import Path


def measured(study: Path, since: float, until: float) -> dict[tuple[str, str], float]:
    """(stage, label) -> seconds, from the done files written in [since, until] (the latest wins)."""
    from needlework.artifacts import STAGE_DONE

    found: dict[tuple[str, str], tuple[float, float]] = {}
    for done in (study / "stages").glob(f"*/*/{STAGE_DONE}"):
        t = done.stat().st_mtime
        if not since <= t <= until:
            continue
        label = json.loads((done.parent / "stage.json").read_text())["label"]
        key = (done.parent.parent.name, label)
        if key not in found or found[key][0] < t:
            found[key] = (t, json.loads(done.read_text())["seconds"])
    return {k: s for k, (_t, s) in found.items()}


def simulate(nodes, seconds: dict[tuple[str, str], float], workers: int, order) -> float:
    """List scheduling: whenever a process is free it takes the first ready node of `order`."""
    left, done, running, now = list(order), set(), [], 0.0
    while left or running:
        ready = [n for n in left if all(id(d) in done for d in n.deps.values())]
        while ready and len(running) < workers:
            n = ready.pop(0)
            left.remove(n)
            heapq.heappush(running, (now + seconds.get((n.stage, n.label), 0.0), id(n), n))
        now, _, n = heapq.heappop(running)
        done.add(id(n))
    return now


def main() -> None:
    import yaml

    from needlework.study.config import apply_overrides, from_dict
    from needlework.study.engine import build_plan, by_priority

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="the study's config (the plan is rebuilt from it)")
    ap.add_argument("--study", required=True, type=Path, help="the study folder that holds its stages")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--since", type=float, default=0.0)
    ap.add_argument("--until", type=float, default=float("inf"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    args = ap.parse_args()
    cfg = from_dict(apply_overrides(yaml.safe_load(Path(args.config).read_text()), args.overrides))
    nodes = build_plan(cfg)
    seconds = measured(args.study, args.since, args.until)
    missing = [f"{n.stage}:{n.label}" for n in nodes if (n.stage, n.label) not in seconds]
    first = {"knockout": 0, "patch": 1}
    rules = {
        "plan": nodes,
        "interventions": sorted(nodes, key=lambda n: first.get(n.stage, 2)),
        "critical": by_priority(nodes),
    }
    out = {rule: round(simulate(nodes, seconds, args.workers, order), 1) for rule, order in rules.items()}
    print(json.dumps({"workers": args.workers, "nodes": len(nodes), "no_duration": missing, "wall_s": out}))


if __name__ == "__main__":
    main()
