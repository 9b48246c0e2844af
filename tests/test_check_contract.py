"""The contract every registered check keeps, generated from the registry.

Each check runs on a small slice of the bundled sample (all three modalities,
the built-in ``shortcut`` checkpoint): it runs or is skipped with a reason, its
metrics are flat, dotted and JSON-safe, it is deterministic for a seed, it leaves
no hooks behind, and every default threshold names a metric it produces.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest

from mmaudit.check import AuditContext, load_builtin_checks
from mmaudit.report import json_safe

ROOT = Path(__file__).resolve().parents[1]
CHECKS = sorted(load_builtin_checks())


@pytest.fixture(scope="session")
def sample_context() -> AuditContext:
    from mmaudit.cache import InferenceCache
    from mmaudit.config import load_config
    from mmaudit.data import build_dataset
    from mmaudit.model import load_model

    cfg = load_config(ROOT / "configs" / "sample.yaml")
    cfg.runtime.max_samples = 96
    cfg.runtime.device = "cpu"
    cfg.runtime.progress = False
    ds = build_dataset(cfg)
    adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
    cache = InferenceCache(adapter, ds, batch_size=32, seed=0)
    cache.request_layers([k for k in ("embedding", *ds.modalities) if k in adapter.layers])
    return AuditContext(config=cfg, dataset=ds, adapter=adapter, cache=cache, seed=0)


def _quick_params(cls):  # type: ignore[no-untyped-def]
    """Smallest allowed resampling counts (at least 50), so the contract stays fast."""
    raw = {}
    for key, field in cls.Params.model_fields.items():
        if key in ("n_boot", "n_permutations"):
            floor = next((m.ge for m in field.metadata if getattr(m, "ge", None) is not None), 50)
            raw[key] = max(50, int(floor))
    return cls.Params.model_validate(raw)


@pytest.mark.parametrize("name", CHECKS)
def test_check_contract(name: str, sample_context: AuditContext) -> None:
    cls = load_builtin_checks()[name]
    assert cls.__doc__ and len(cls.__doc__) > 80, (
        "a check's docstring says what, why, metrics, thresholds"
    )
    assert cls.description
    check = cls(_quick_params(cls))
    reason = check.missing_requirements(sample_context)
    if reason is not None:
        pytest.skip(f"{name} skipped on the sample: {reason}")
    first = check.run(sample_context)
    assert sample_context.adapter.hook_count() == 0
    assert first.metrics, f"{name} produced no metrics"
    for key in first.metrics:
        assert key and " " not in key, f"metric names are flat dotted identifiers: {key!r}"
    json.dumps(json_safe(first.metrics), allow_nan=False)
    second = check.run(sample_context)
    assert json_safe(first.metrics) == json_safe(second.metrics), "same seed, same metrics"
    for rule_name, rule in cls.default_thresholds.items():
        assert any(fnmatch.fnmatchcase(m, rule.metric) for m in first.metrics), (
            f"threshold {rule_name} names {rule.metric!r}, which {name} does not produce"
        )
    for fig in first.figures.values():
        import matplotlib.pyplot as plt

        plt.close(fig)
