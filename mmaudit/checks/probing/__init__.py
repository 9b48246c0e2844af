"""Check ``probing``: what the embeddings encode about patients and sites, and whether the
model uses it.

The check class, its parameters and the order of its stages are in ``check.py``; each stage
is a module of its own."""

from mmaudit.checks.probing.check import ProbingCheck

__all__ = ["ProbingCheck"]
