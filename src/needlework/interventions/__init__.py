"""needlework.interventions: knockout and cross-model patching of head sets (SPEC §2).

The interventions themselves (`Zero`, `Mean`, `Patch`, `Collect`, `Uniform`) and their one
installer `intervened` live in `needlework.models.instrument`; head sets and their selection in
`needlework.models.sites`. The submodules are imported on use: they load torch and transformers.
"""

__all__ = ["config", "heads", "knockout", "patch"]
