"""The study engine: a plan of stage nodes per (model, task, training set), each cached under
`OUT/stages/<stage>/<key>/` where `key` hashes the node's config slice and its inputs' output
hashes. A node runs in `OUT/stages/<stage>/.work-<key>/` and becomes visible by one atomic rename
after its `done.json` is written, so a study killed at any moment (kill -9) resumes where it
stopped and ends with the same results; rerunning skips every node that is done.

Stage functions come from a registry (`needlework.study.stages.REAL_STAGES`); tests pass their own.
The engine imports the stages (and, through them, the launcher); none of them imports the engine.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from needlework.artifacts import STAGE_DONE, STAGE_INFO, STAGES, STUDY_INDEX, TrainRun
from needlework.errors import NeedleworkError
from needlework.io import hash_obj, write_json, write_text
from needlework.study.config import StudyConfig, dump_config
from needlework.study.nodes import Node, StageContext, StageFn
from needlework.study.plan import build_plan, selected
from needlework.study.stages import REAL_STAGES

__all__ = ["Node", "StageContext", "StageFn", "build_plan", "node_key", "output_hash", "run_study", "selected"]

STAGE_ORDER = ("data", "train", "probe", "gate", "evaluate", "score", "compare", "knockout", "patch", "analysis")
RESUMABLE = {"train"}  # stages whose work dir is kept after a crash (training resumes from checkpoints)
VERSION = 1  # bump to invalidate every cached stage when the layout of stage outputs changes
# Keys dropped before hashing a JSON output: they change from run to run without changing results.
VOLATILE = ("elapsed", "per_s", "time", "date", "wall", "peak_mem", "tokens_per_s", "seconds", "versions")


# ----------------------------------------------------------------------------------- hashing


def _strip_volatile(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_volatile(v) for k, v in obj.items() if not any(s in k for s in VOLATILE)}
    if isinstance(obj, list):
        return [_strip_volatile(v) for v in obj]
    return obj


TEXT_SUFFIXES = (".json", ".jsonl", ".csv", ".md", ".txt")


def output_hash(d: Path, study_dir: Path | None = None) -> str:
    """A hash of a stage's results: file contents, JSON without timing keys, Parquet by value.
    Logs, checkpoints and figures are left out (they differ between equal runs), and the study
    folder's own path is masked, so a copied or moved study keeps its hashes."""
    import hashlib

    mask = str(study_dir) if study_dir is not None else None
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d).as_posix()
        if (
            not p.is_file()
            or rel == STAGE_DONE
            or p.suffix in (".log", ".png", ".tmp")
            or rel.endswith(TrainRun.LOG)
            or f"{TrainRun.CHECKPOINTS}/" in rel
            or f"{TrainRun.TRACKING}/" in rel
        ):
            continue
        h.update(rel.encode() + b"\0")
        if p.suffix == ".json":
            try:
                text = json.dumps(_strip_volatile(json.loads(p.read_text())), sort_keys=True, default=str)
            except ValueError:
                text = p.read_text(errors="replace")
            h.update((text if mask is None else text.replace(mask, "<study>")).encode())
            continue
        if p.suffix in TEXT_SUFFIXES and mask is not None:
            h.update(p.read_text(errors="replace").replace(mask, "<study>").encode())
            continue
        if p.suffix == ".parquet":
            import pandas as pd

            h.update(pd.read_parquet(p).to_csv(index=False).encode())
            continue
        h.update(p.read_bytes())
    return h.hexdigest()


def node_key(node: Node) -> str | None:
    """The node's cache key, or None while one of its inputs is not done."""
    if any(d.output_hash is None for d in node.deps.values()):
        return None
    blob = {"v": VERSION, "stage": node.stage, "slice": node.slice, "inputs": {k: d.output_hash for k, d in node.deps.items()}}
    return hash_obj(blob)[:16]


# ----------------------------------------------------------------------------------- running


def _try_lock(out: Path, node: Node):
    """Take the node's lock file without waiting; None when another process holds it. The OS
    drops the lock when its holder dies, so a killed run never leaves a stale lock."""
    path = out / STAGES / node.stage / f".lock-{node.key}"
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def stage_dir(out: Path, node: Node) -> Path:
    return out / STAGES / node.stage / str(node.key)


_ICONS = {
    "cached": ("✓ cached", "green"),
    "done": ("✓ done", "bold green"),
    "run": ("▶ run", "yellow"),
    "skipped": ("- skipped", "dim"),
    "blocked": ("… blocked", "dim"),
    "failed": ("✗ failed", "bold red"),
    "busy": ("⧗ elsewhere", "cyan"),
    "plan-cached": ("cached", "green"),
    "plan-run": ("to run", "yellow"),
    "plan-pending": ("after inputs", "dim"),
}


def _status_line(console, node: Node, note: str = "") -> None:
    """One line per stage: status, stage, model/task/set, key (and seconds when it ran)."""
    text, style = _ICONS.get(note or node.status, (node.status, ""))
    key = (node.key or "-" * 12)[:12]
    secs = f"  {node.seconds:.1f}s" if node.status == "done" else ""
    console.print(f"[{style}]{text:<13}[/] {node.stage:<9} {node.label:<32} {key}{secs}", highlight=False)


def write_manifest(cfg: StudyConfig, out: Path, nodes: list[Node]) -> None:
    """`OUT/study.json`: every node with its stage dir, read by the report and by tests."""
    rows = [
        {
            "stage": n.stage,
            "label": n.label,
            "model": n.model,
            "task": n.task,
            "set": n.set,
            "key": n.key,
            "status": n.status,
            "dir": (f"{STAGES}/{n.stage}/{n.key}" if n.status in ("cached", "done") else None),
            "seconds": round(n.seconds, 3),
        }
        for n in nodes
    ]
    write_json(out / STUDY_INDEX, {"name": cfg.name, "config": cfg.to_dict(), "nodes": rows})


def run_node(node: Node, cfg: StudyConfig, out: Path, fn: StageFn) -> None:
    """Run one node in its work dir, then publish it by renaming the work dir onto its key dir."""
    final = stage_dir(out, node)
    work = final.with_name(f".work-{node.key}")
    if work.exists() and node.stage not in RESUMABLE:
        shutil.rmtree(work)  # left by a killed run
    work.mkdir(parents=True, exist_ok=True)
    write_json(
        work / STAGE_INFO,
        {
            "stage": node.stage,
            "label": node.label,
            "slice": node.slice,
            "inputs": {k: f"{STAGES}/{d.stage}/{d.key}" for k, d in node.deps.items()},
        },
    )
    ctx = StageContext(node=node, cfg=cfg, out=work, inputs={k: stage_dir(out, d) for k, d in node.deps.items()}, study_dir=out)
    t0 = time.perf_counter()
    fn(ctx)
    node.seconds = time.perf_counter() - t0
    node.output_hash = output_hash(work, out)
    write_json(work / STAGE_DONE, {"output_hash": node.output_hash, "seconds": node.seconds})
    if final.exists():  # cannot happen under the node lock; keep the published one
        shutil.rmtree(work)
    else:
        os.rename(work, final)


def run_study(
    cfg: StudyConfig,
    out: str | os.PathLike,
    stages: dict[str, StageFn] | None = None,
    dry_run: bool = False,
    only: set[str] | None = None,
    console=None,
    report: bool = True,
    poll_s: float = 2.0,
    workers: int = 1,
) -> list[Node]:
    """Run (or, with `dry_run`, print) the whole study; returns the nodes with their status.

    Args:
        cfg: the validated study config.
        out: the study folder (stages/, study.json, config.yaml, report/).
        stages: stage name -> function; default `needlework.study.stages.REAL_STAGES`.
        dry_run: print the plan and what is cached; run nothing.
        only: run only these stages (others are taken from the cache when done, else skipped).
        report: write the HTML report at the end.
        poll_s: seconds between checks while the only stages left are run by other processes.
        workers: run this many stage processes side by side (this one and workers - 1 started
            here; their logs in OUT/logs/). On one GPU they share it, each held to 1/workers of
            its memory, so independent stages of a small model overlap instead of queueing.
    Several processes may run the same study in the same folder at once (one per GPU, or per
    machine on a shared file system): each takes the stages no one else holds, and waits for the
    rest. `workers` starts such processes itself.
    Raises:
        NeedleworkError: an unknown stage in `only`, or a stage's error.
    """
    from rich.console import Console

    console = console or Console(highlight=False)
    out = Path(out).resolve()
    if only is not None:
        unknown = sorted(set(only) - set(STAGE_ORDER) - {"report"})
        if unknown:
            raise NeedleworkError(f"unknown stage(s) in --only: {', '.join(unknown)}", f"use any of {', '.join(STAGE_ORDER)}, report")
    stages = REAL_STAGES if stages is None else stages
    nodes = build_plan(cfg)
    if dry_run:
        return _dry_run(cfg, out, nodes, only, console)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", dump_config(cfg))
    console.print(f"[bold]study {cfg.name}[/]: {len(nodes)} stages -> {out}", highlight=False)
    pool = _start_workers(cfg, out, stages, only, poll_s, workers, console)
    try:
        _run_nodes(nodes, cfg, out, stages, only, console, poll_s)
    except BaseException:
        for p in pool:  # this process failed: stop the others too
            p.terminate()
        _join_workers(pool, out, check=False)
        raise
    finally:
        write_manifest(cfg, out, nodes)
    _join_workers(pool, out)
    if report and (only is None or "report" in only):
        from needlework.report.report import write_report

        path = write_report(out)
        console.print(f"report: {path}", highlight=False)
    return nodes


# Which ready node a free process takes first: the one that heads the longest chain of work still
# to come (its own stage and the longest path through the nodes that need it: list scheduling's
# "upward rank"), so the critical path never waits behind stages that can wait; ties in plan order.
# The costs are rough seconds of one node of a small model's study on one GPU (BENCHMARKS.md);
# they decide only the order in which ready nodes are taken, never a result.
STAGE_COST = {"data": 15, "train": 50, "evaluate": 25, "score": 20, "knockout": 90, "patch": 60, "analysis": 2}


def critical_path(nodes: list[Node]) -> dict[int, float]:
    """Per node (by id): its stage's cost plus the longest chain of costs among the nodes that need
    it, directly or not. `nodes` are in dependency order (`build_plan`)."""
    needed_by: dict[int, list[Node]] = {id(n): [] for n in nodes}
    for n in nodes:
        for d in n.deps.values():
            needed_by.setdefault(id(d), []).append(n)
    rank: dict[int, float] = {}
    for n in reversed(nodes):  # every node after its inputs, so each is ranked after what needs it
        rank[id(n)] = STAGE_COST.get(n.stage, 1) + max((rank[id(c)] for c in needed_by[id(n)]), default=0)
    return rank


def by_priority(nodes: list[Node]) -> list[Node]:
    """`nodes` in the order a free process considers them: longest chain of work first, then plan order."""
    rank = critical_path(nodes)
    return sorted(nodes, key=lambda n: -rank[id(n)])


def share_gpu(workers: int) -> None:
    """Hold this process to 1/workers of the GPU's memory (so `auto` batch sizes leave room for
    the other workers); nothing without CUDA."""
    if workers > 1:
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(1.0 / workers)


def _worker_main(cfg: StudyConfig, out: Path, stages: dict[str, StageFn], only, poll_s: float, workers: int, i: int) -> None:
    """One extra worker process: the same study, its console in OUT/logs/worker-<i>.log, no report."""
    from rich.console import Console

    share_gpu(workers)
    with open(out / "logs" / f"worker-{i}.log", "w") as f:
        run_study(cfg, out, stages, only=only, console=Console(file=f, highlight=False, width=160), report=False, poll_s=poll_s)


def _start_workers(cfg, out: Path, stages, only, poll_s: float, workers: int, console) -> list:
    if workers < 1:
        raise NeedleworkError(f"workers must be >= 1, not {workers}", "pass --workers 1 or more")
    if workers == 1:
        return []
    import multiprocessing

    share_gpu(workers)
    (out / "logs").mkdir(exist_ok=True)
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    pool = [ctx.Process(target=_worker_main, args=(cfg, out, stages, only, poll_s, workers, i), daemon=False) for i in range(1, workers)]
    for p in pool:
        p.start()
    console.print(f"{workers - 1} more worker process(es) share the stages (logs in {out / 'logs'})", highlight=False)
    return pool


def _join_workers(pool: list, out: Path, check: bool = True) -> None:
    for p in pool:
        p.join()
    if not check:
        return
    failed = [i for i, p in enumerate(pool, 1) if p.exitcode != 0]
    if failed:
        raise NeedleworkError(
            f"worker process(es) {failed} failed", "see " + ", ".join(str(out / "logs" / f"worker-{i}.log") for i in failed)
        )


def _run_nodes(nodes: list[Node], cfg: StudyConfig, out: Path, stages, only, console, poll_s: float) -> None:
    """Resolve nodes until none is pending, waiting or busy. Of the nodes ready, the one heading the
    longest chain of work goes first (`by_priority`); after each finished node the sweep starts
    again, since it may have made such a one ready."""
    order = by_priority(nodes)
    while True:
        progressed = False
        for node in order:
            if node.status not in ("pending", "waiting", "busy"):
                continue
            before = node.status
            _step(node, cfg, out, stages, only, console)
            if node.status in ("done", "cached", "skipped", "blocked"):
                progressed = True
            if node.status == "busy" and before != "busy":
                _status_line(console, node)
            if node.status == "done":
                write_manifest(cfg, out, nodes)  # a partial report can be written at any time
                break
        if not any(n.status in ("pending", "waiting", "busy") for n in nodes):
            return
        if not progressed:  # everything left runs in other processes (or waits on it)
            time.sleep(poll_s)


def _step(node: Node, cfg: StudyConfig, out: Path, stages: dict[str, StageFn], only, console) -> None:
    """Resolve one node: waiting (inputs run elsewhere), blocked, cached, skipped, busy (another
    process holds its lock), or run it here."""
    if any(d.status in ("pending", "waiting", "busy") for d in node.deps.values()):  # inputs not resolved yet
        node.status = "waiting"
        return
    node.key = node_key(node)
    if node.key is None:
        node.status = "blocked"
        _status_line(console, node)
        return
    done = stage_dir(out, node) / STAGE_DONE
    if done.exists():
        _cached(node, done, console)
        return
    if only is not None and node.stage not in only:
        node.status = "skipped"
        _status_line(console, node)
        return
    if node.stage not in stages:
        raise NeedleworkError(f"no function for stage {node.stage!r}", "install the package that provides it")
    lock = _try_lock(out, node)
    if lock is None:
        node.status = "busy"
        return
    try:
        if done.exists():  # another process finished it between our check and our lock
            _cached(node, done, console)
            return
        _status_line(console, node, "run")
        try:
            run_node(node, cfg, out, stages[node.stage])
        except BaseException:
            node.status = "failed"
            _status_line(console, node)
            raise
        node.status = "done"
        _status_line(console, node)
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def _cached(node: Node, done: Path, console) -> None:
    node.output_hash = json.loads(done.read_text())["output_hash"]
    node.status = "cached"
    _status_line(console, node)


def _dry_run(cfg: StudyConfig, out: Path, nodes: list[Node], only, console) -> list[Node]:
    console.print(f"[bold]plan of study {cfg.name}[/] ({len(nodes)} stages) in {out}; nothing runs (--dry-run)", highlight=False)
    for node in nodes:
        node.key = node_key(node)
        done = node.key is not None and (stage_dir(out, node) / STAGE_DONE).exists()
        if done:
            node.output_hash = json.loads((stage_dir(out, node) / STAGE_DONE).read_text())["output_hash"]
            node.status = "cached"
            note = "plan-cached"
        elif only is not None and node.stage not in only:
            node.status, note = "skipped", "skipped"
        else:
            node.status, note = ("pending", "plan-run") if node.key else ("pending", "plan-pending")
        _status_line(console, node, note)
    n_cached = sum(n.status == "cached" for n in nodes)
    console.print(f"{n_cached} cached, {len(nodes) - n_cached} to run", highlight=False)
    return nodes
