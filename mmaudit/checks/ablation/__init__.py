"""Check ``ablation``: how much each modality contributes, how modalities interact, and what
happens when one is missing.

The check class, its parameters and the order of its stages are in ``check.py``; each stage
is a module of its own."""

from mmaudit.checks.ablation.check import AblationCheck

__all__ = ["AblationCheck"]
