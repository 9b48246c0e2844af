"""The contract every registered check keeps, generated from the registry.

Each check runs on a small slice of the bundled sample (all three modalities,
the built-in ``shortcut`` checkpoint): it runs or is skipped with a reason, its
metrics are flat, dotted and JSON-safe, it is deterministic for a seed, it leaves
no hooks behind, every default threshold names a metric it produces, and it says
what its verdict rests on (``judged`` tests, ``rows_used``; a reason when it
judged nothing).
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest

from mmaudit.checks.contract import AuditContext
from mmaudit.checks.findings import judge
from mmaudit.checks.registry import load_builtin_checks
from mmaudit.report.document import json_safe

ROOT = Path(__file__).resolve().parents[2]
CHECKS = sorted(load_builtin_checks())


@pytest.fixture(scope="session")
def sample_context() -> AuditContext:
    from mmaudit.engine.cache import InferenceCache
    from mmaudit.engine.config_file import load_config
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.loading import load_model

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
    # every check says what its verdict rests on: nothing tested must read as skipped
    assert isinstance(first.judged, int) and first.judged >= 0, f"{name} does not set judged"
    assert first.judged == second.judged
    n = len(sample_context.dataset)
    assert isinstance(first.rows_used, int) and 0 <= first.rows_used <= n, first.rows_used
    assert all(isinstance(c, str) and c for c in first.coverage)
    if first.judged == 0:
        assert first.skip_reason, f"{name} judged nothing and gives no reason"
    flagged = judge(name, first.metrics, cls.default_thresholds)
    if flagged:
        assert first.judged > 0, f"{name} flags {flagged[0].metric} but says it judged nothing"
    for fig in first.figures.values():
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_count_judged_counts_what_a_rule_can_judge() -> None:
    """A metric counts when a rule can compare it: its statistic exists and the p-value or
    CI bound a gate needs is there; a gate that lets it pass still judged it."""
    from mmaudit.checks.contract import ThresholdRule
    from mmaudit.checks.findings import count_judged
    from mmaudit.methods.stats import Estimate

    rules = {
        "gap": ThresholdRule(metric="gap.*", warn_above=0.1, max_p=0.05, ci_low_above=0.0),
        "low": ThresholdRule(metric="auroc", statistic="ci_high", warn_below=0.7),
    }
    metrics = {
        "gap.a": Estimate(0.3, 0.1, 0.5, 40, 0.01),  # judged (and flagged)
        "gap.b": Estimate(0.0, -0.1, 0.1, 40, 0.9),  # judged (passes the p gate)
        "gap.c": Estimate(0.3, None, None, 40, 0.01),  # no CI: the gate cannot judge it
        "gap.d": Estimate(0.3, 0.1, 0.5, 40, None),  # no p-value
        "gap.e": float("nan"),
        "auroc": Estimate(0.8, 0.7, None, 40),  # no upper CI bound
        "other": 1.0,
    }
    assert count_judged(metrics, rules) == 2
    metrics["auroc"] = Estimate(0.8, 0.7, 0.9, 40)
    assert count_judged(metrics, rules) == 3
    assert count_judged({}, rules) == 0


#: numeric parameters that take any value, and why
UNBOUNDED_PARAMS = {
    ("attention", "layer"): "an index into the module order, negative from the end",
}


def _unbounded_numbers(annotation: object, metadata: list[object]) -> list[str]:
    """The int / float leaves of a parameter's type (through ``X | None``, lists, tuples,
    dict values and ``Annotated``) that carry no range (ge / gt / le / lt) and are not
    restricted to finite values."""
    import types
    import typing

    from annotated_types import Ge, Gt, Le, Lt

    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        extra = [m for a in args[1:] for m in getattr(a, "metadata", [a])]
        return _unbounded_numbers(args[0], [*metadata, *extra])
    if origin in (typing.Union, types.UnionType, list, tuple, dict):
        inner = args[1:] if origin is dict else args
        keep = metadata if origin in (typing.Union, types.UnionType) else []
        return [
            leaf
            for a in inner
            if a is not type(None) and a is not Ellipsis
            for leaf in _unbounded_numbers(a, keep)
        ]
    bounded = any(
        isinstance(m, (Ge, Gt, Le, Lt)) or getattr(m, "allow_inf_nan", None) is False
        for m in metadata
    )
    return [annotation.__name__] if annotation in (int, float) and not bounded else []


@pytest.mark.parametrize("name", CHECKS)
def test_every_numeric_parameter_has_a_range(name: str) -> None:
    """A check parameter out of range (``grid: [0, 4]``, ``bins: {age: [1, .inf]}``) must be
    one line naming the key at validation, not a crash (or a silent nonsense result) deep
    inside the audit."""
    cls = load_builtin_checks()[name]
    for key, field in cls.Params.model_fields.items():
        if (name, key) in UNBOUNDED_PARAMS:
            continue
        loose = _unbounded_numbers(field.annotation, list(field.metadata))
        assert not loose, f"{name}.params.{key} ({field.annotation}) has no range"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("saliency: {params: {n_boot: 0}}", "checks.saliency.params.n_boot: must be >= 50 (got 0)"),
        ("attention:\n    params:\n      grid: [0, 4]", "attention.params.grid[0]: must be >= 1"),
        (
            "subgroups: {params: {bins: {age: [40, 60, 6]}}}",
            "checks.subgroups.params.bins.age: must be increasing edges, got [40, 60, 6]",
        ),
        (
            "performance: {thresholds: {auroc_low: {warn_below: abc}}}",
            "checks.performance.thresholds.auroc_low.warn_below: Input should be a valid number",
        ),
    ],
)
def test_check_params_errors_read_like_config_errors(
    entry: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One line: FILE:LINE, the dotted key, what is wrong with the value as config errors
    word it (not pydantic's "Input should be greater than or equal to"), and a hint; exit 2
    from `mmaudit validate`, no traceback."""
    from mmaudit.cli import main

    lines = (ROOT / "configs" / "sample.yaml").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("checks:"))
    lines[at] = f"checks:\n  {entry}"
    path = tmp_path / "cfg.yaml"
    path.write_text("\n".join(lines).replace("../sample_data", str(ROOT / "sample_data")))
    key_line = at + 2 + (2 if "\n" in entry else 0)
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(path)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{path}:{key_line}: " in err and expected in err, err
    assert "greater than or equal" not in err
