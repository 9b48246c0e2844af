"""Check ``saliency``: image shortcuts -- where the attribution lies, whether the model uses
that region, and whether the saliency method itself can be trusted.

The check class, its rules and the order of its stages are in ``check.py``, its parameters
in ``params.py``; each stage is a module of its own (maps, map_quality, sanity, location,
hotspot, subgroups, occlusion, hotspot_verdict, clusters, faithfulness, tables, figures,
summary) that takes the immutable ``Setting`` and the records earlier stages returned."""

from mmaudit.checks.saliency.check import SaliencyCheck

__all__ = ["SaliencyCheck"]
