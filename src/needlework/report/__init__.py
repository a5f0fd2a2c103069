"""needlework.report: the study's HTML report, built only from the stages' result files."""

__all__ = ["report"]
