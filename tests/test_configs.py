"""Every shipped study config loads and validates (configs are tested as data)."""

from pathlib import Path

import pytest

from needlework.study.config import load_config
from needlework.study.engine import build_plan

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    assert {p.name for p in CONFIGS} >= {"demo.yaml", "paper.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates_and_plans(path):
    cfg = load_config(path)
    for t in cfg.tasks.values():
        assert t.reference in t.train_sets
        assert sum(s.kind != "none" for s in t.train_sets.values()) >= 5  # reference + at least four others
    nodes = build_plan(cfg)
    assert {n.stage for n in nodes} >= {"data", "train", "evaluate", "score", "compare", "analysis"}


def test_demo_is_small_and_offline():
    cfg = load_config(CONFIGS[[p.name for p in CONFIGS].index("demo.yaml")])
    assert list(cfg.models.values())[0].name == "smollm2" and list(cfg.tasks) == ["mdqa"]
    ref = cfg.tasks["mdqa"].train_sets[cfg.tasks["mdqa"].reference]
    assert ref.generate == {"concept": "high", "context": "high"}  # most realistic: all relations, real prose
