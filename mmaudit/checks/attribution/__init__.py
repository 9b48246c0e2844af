"""Check ``attribution``: which report words and which lab values the predictions rest on.

The check class, its parameters and the order of its stages are in ``check.py``; each stage
is a module of its own."""

from mmaudit.checks.attribution.check import AttributionCheck

__all__ = ["AttributionCheck"]
