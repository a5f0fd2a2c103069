"""`python -m needlework.study.worker SPEC.json`: one process of a launched train/evaluate stage
(see needlework.study.launch, which writes SPEC.json and starts these processes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from needlework.study.config import from_dict
from needlework.study.nodes import Node, StageContext
from needlework.study.stages import IN_PROCESS


def worker_main(spec_path: str) -> None:
    """Entry point of one launched process: rebuild the stage context and run the stage function."""
    spec = json.loads(Path(spec_path).read_text())
    node = Node(**spec["node"])
    cfg = from_dict(spec["config"])
    ctx = StageContext(
        node=node, cfg=cfg, out=Path(spec["out"]), inputs={k: Path(v) for k, v in spec["inputs"].items()}, study_dir=Path(spec["study_dir"])
    )
    IN_PROCESS[spec["stage"]](ctx)


if __name__ == "__main__":
    worker_main(sys.argv[1])
