"""Run the fake-stage study in a separate process (for the multi-process and kill -9 tests):
python fake_study_main.py OUT CALLS_FILE [early]

`early`: the stop_early study (fake_early_config), each stage sleeping before and after its work, so
that a kill lands inside stages (a finished but unpublished training segment among them)."""

import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rich.console import Console  # noqa: E402

import study_helpers as H  # noqa: E402
from needlework.study.config import from_dict  # noqa: E402
from needlework.study.engine import run_study  # noqa: E402

RAN: list[tuple[str, str]] = []


def slow(fn, before: float = 0.3, after: float = 0.0):
    def run(ctx):
        RAN.append((ctx.node.stage, ctx.node.label))
        time.sleep(before)  # long enough for the other process to find this stage busy
        fn(ctx)
        time.sleep(after)

    return run


if __name__ == "__main__":
    out, calls = sys.argv[1], sys.argv[2]
    early = sys.argv[3:] == ["early"]
    cfg = H.fake_early_config(stop_early=True) if early else H.fake_config()
    stages = {k: slow(v, *((0.1, 0.1) if early else ())) for k, v in H.fake_stages().items()}
    nodes = run_study(from_dict(cfg), out, stages=stages, console=Console(file=io.StringIO()), report=False, poll_s=0.1)
    Path(calls).write_text(
        "".join(f"{s}\t{lab}\n" for s, lab in RAN) + "".join(f"#\t{n.stage}\t{n.label}\t{n.status}\t{n.output_hash}\n" for n in nodes)
    )
