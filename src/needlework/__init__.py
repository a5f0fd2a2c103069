"""needlework: synthetic long-context data, fine-tuning, and retrieval-head diagnostics."""

__version__ = "0.1.0"

__all__ = ["__version__", "data", "evaluate", "heads", "interventions", "models", "report", "study", "train"]
