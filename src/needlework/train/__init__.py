"""needlework.train: answer-only SFT (LoRA, attention-only or full), packing, exact resume, DDP/FSDP2.
Submodules are imported on use: they load torch."""

__all__ = ["checkpoint", "checkpointing", "config", "data", "loss", "sft"]
