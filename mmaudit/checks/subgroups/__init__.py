"""Check ``subgroups``: who the model fails -- performance per patient / site group and the
gaps between groups, with uncertainty.

The check class, its parameters and the order of its stages are in ``check.py``; each stage
is a module of its own."""

from mmaudit.checks.subgroups.check import SubgroupsCheck

__all__ = ["SubgroupsCheck"]
