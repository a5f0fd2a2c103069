"""needlework.models: loading (`load`), named sites and head sets (`sites`), the interventions on them
(`instrument`) and greedy decoding (`decode`). Submodules are imported on use: they load torch."""

__all__ = ["decode", "instrument", "load", "sites"]
