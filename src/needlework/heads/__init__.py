"""needlework.heads: retrieval / insight / attention-mass head scores (SPEC §2), comparison of
head sets, heatmaps, and export/import in Wu et al.'s and DuoAttention's formats.

Public entry points (imported from their modules, so that `needlework --help` stays fast):
`score.score_heads`, `score.ScoreConfig`, `run.run_score`, `compare.compare_dirs`,
`plot.heatmap`, `io.export_scores`, `io.import_scores`.
"""

__all__ = ["compare", "config", "io", "plot", "run", "score"]
