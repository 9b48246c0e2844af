"""Check ``embedding``: the shape of the representation space.

The check class, its parameters and the order of its stages are in ``check.py``; each stage
is a module of its own."""

from mmaudit.checks.embedding.check import EmbeddingCheck

__all__ = ["EmbeddingCheck"]
