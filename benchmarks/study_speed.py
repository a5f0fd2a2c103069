"""Wall time of a whole study, per stage, on one GPU: the fast path against today's serial path in
the same job (a ratio), with the GPU's busy fraction and the results of both side by side.

  serial  the config with the execution settings of the serial path: one example per training pass
          (`rows_per_pass: 0`), evaluation/knockout/patching 4 examples per batch and scoring 1
          (the earlier defaults), one stage at a time (`--workers 1`).
  fast    the config as given (e.g. configs/gpu-mdqa.yaml: `rows_per_pass: auto`, `batch_size:
          auto`) with `--workers N` stage processes sharing the GPU.

Both runs start from an empty study folder (nothing cached), unless `--keep`. Prints one JSON line per run and a
summary line with the ratio; the results (score and head recall per training set) must agree up to
the order of floating-point sums.

  python benchmarks/study_speed.py --config configs/gpu-mdqa.yaml --scale 0.25 --out runs/speed
  python benchmarks/study_speed.py --config configs/gpu-mdqa.yaml --modes fast --out runs/speed-full

`--scale` multiplies the example counts (training, evaluation, knockout/patching limits) so the
serial baseline fits a time budget; `--length`, `--sets` and `--device` shrink a study further
(for a CPU check of this script).
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

SERIAL = {"train": {"rows_per_pass": 0}, "eval": {"batch_size": 4}, "score": {"batch_size": 1}}


def _scaled(raw: dict, args) -> dict:
    cfg = copy.deepcopy(raw)
    s = cfg.setdefault("sizes", {})
    s["n_train"] = max(2, round(s.get("n_train", 48) * args.scale))
    s["n_eval"] = max(2, round(s.get("n_eval", 24) * args.scale))
    for sec in ("knockout", "patch"):
        if cfg.get(sec, {}).get("limit"):
            cfg[sec]["limit"] = max(2, round(cfg[sec]["limit"] * args.scale))
    for t in cfg["tasks"].values():
        if args.length:
            t["length"] = args.length
        if args.sets:
            keep = set(args.sets.split(",")) | {t["reference"]}
            t["train_sets"] = {k: v for k, v in t["train_sets"].items() if k in keep}
    if args.sets and "patch" in cfg:
        cfg["patch"]["targets"] = [x for x in cfg["patch"].get("targets", []) if x in args.sets.split(",")] or "none"
    if args.device:
        for m in cfg["models"].values():
            m["device"] = args.device
            if args.device == "cpu":
                m["dtype"] = "float32"
    return cfg


def _serial(cfg: dict) -> dict:
    cfg = copy.deepcopy(cfg)
    for sec, over in SERIAL.items():
        cfg.setdefault(sec, {}).update(over)
    return cfg


class GpuBusy:
    """Samples nvidia-smi's utilisation every 0.5 s in a thread; `fraction` = mean / 100."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
                out = subprocess.run(query, capture_output=True, text=True, timeout=5)
                self.samples.append(float(out.stdout.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return
            self._stop.wait(0.5)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(timeout=10)

    @property
    def fraction(self) -> float | None:
        return round(sum(self.samples) / len(self.samples) / 100, 3) if self.samples else None


def stage_seconds(out: Path, since: float = 0.0) -> tuple[dict[str, float], dict[str, int]]:
    """Seconds per stage summed over the study's nodes, from every node's done file (whichever
    process ran it) written after `since` (a Unix time: this run's, not a kept earlier run's), and
    the number of nodes per stage."""
    from needlework.artifacts import STAGE_DONE

    per: dict[str, float] = {}
    n: dict[str, int] = {}
    for d in sorted((out / "stages").glob(f"*/*/{STAGE_DONE}")):
        if d.stat().st_mtime < since:
            continue
        stage = d.parent.parent.name
        per[stage] = round(per.get(stage, 0.0) + json.loads(d.read_text())["seconds"], 1)
        n[stage] = n.get(stage, 0) + 1
    return per, n


def run(mode: str, cfg_dict: dict, out: Path, workers: int, keep: bool = False) -> dict:
    from rich.console import Console

    from needlework.report.report import summary_lines
    from needlework.study.config import from_dict
    from needlework.study.engine import run_study

    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    cfg = from_dict(cfg_dict)
    log = io.StringIO()
    started = time.time()
    t0 = time.perf_counter()
    with GpuBusy() as busy:
        nodes = run_study(cfg, out, console=Console(file=log, width=160), workers=workers)
    wall = time.perf_counter() - t0
    (out / "console.log").write_text(log.getvalue())
    per_stage, n_run = stage_seconds(out, since=started)
    return {
        "mode": mode,
        "workers": workers,
        "wall_s": round(wall, 1),
        "stage_seconds": per_stage,  # summed over nodes (they overlap when workers > 1)
        "nodes_run": n_run,
        "not_done": sorted(f"{n.stage}:{n.label}" for n in nodes if n.status not in ("done", "cached")),
        "gpu_busy": busy.fraction,
        "n_train": cfg.sizes.n_train,
        "n_eval": cfg.sizes.n_eval,
        "results": summary_lines(out),
        "early_cost": _early_cost(out),
    }


def _early_cost(out: Path) -> list[str]:
    """Each analysis's measured monitoring cost (early prediction), when the study had `early:`."""
    from needlework.artifacts import MANIFEST, Analysis
    from needlework.report.early import reading_cost

    lines = []
    for m in sorted((out / "stages" / "analysis").glob(f"*/{MANIFEST}")):
        an = Analysis.read(m.parent).result
        if an.get("early"):
            lines.append(f"{an['model']}/{an['task']}: {reading_cost(an['early'])}")
    return lines


def main() -> None:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/gpu-mdqa.yaml")
    ap.add_argument("--out", default="runs/study-speed")
    ap.add_argument("--modes", default="serial,fast", help="serial, fast, or both (comma-separated, run in this order)")
    ap.add_argument("--workers", type=int, default=4, help="stage processes of the fast run")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the example counts")
    ap.add_argument("--length", type=int, default=None, help="override every task's length (tokens)")
    ap.add_argument("--sets", default=None, help="keep only these training sets (and the reference)")
    ap.add_argument("--device", default=None, help="override the models' device (cpu for a check of this script)")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="a config override, as `needlework study CONFIG KEY.PATH=VALUE` takes (repeatable), e.g. early.probe_n=32",
    )
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the study folder: stages another run left there are reused (e.g. a one-task study's, before a "
        "study that adds tasks), and the wall time covers only what is left",
    )
    args = ap.parse_args()
    from needlework.study.config import apply_overrides

    raw = _scaled(apply_overrides(yaml.safe_load(Path(args.config).read_text()), args.overrides), args)
    rows = []
    for mode in args.modes.split(","):
        cfg = _serial(raw) if mode == "serial" else raw
        r = run(mode, cfg, Path(args.out) / mode, 1 if mode == "serial" else args.workers, keep=args.keep)
        print(json.dumps(r), flush=True)
        rows.append(r)
    if len(rows) == 2:
        serial_s, fast_s = rows[0]["wall_s"], rows[1]["wall_s"]
        print(json.dumps({"speedup": round(serial_s / fast_s, 2), "serial_s": serial_s, "fast_s": fast_s}))


if __name__ == "__main__":
    main()
