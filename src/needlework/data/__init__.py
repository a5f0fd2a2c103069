"""needlework.data: records (the JSONL format), rendering, synthetic generators, real-data loaders and
the LLM document writer. Submodules are imported on use (some load tokenizers)."""

__all__ = [
    "cli",
    "cli_real",
    "export",
    "generate",
    "haystack",
    "inspect",
    "loaders",
    "locate",
    "phrasings",
    "real_length",
    "records",
    "render",
    "ruler",
    "tasks",
    "world",
    "writer",
]
