"""needlework.study: one config runs the whole grid (data, train, evaluate, score, compare, knockout,
patch, analysis) through a cached, resumable engine; `needlework study` is its command."""

__all__ = ["analysis", "config", "engine", "launch", "nodes", "stages", "worker"]
