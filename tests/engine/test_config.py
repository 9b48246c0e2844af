"""Config loading: strict keys, did-you-mean, line numbers, path resolution, shipped configs,
and one clear line for every bad config (duplicate keys, ranges, empty entries, encodings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmaudit.engine.config_file import load_config
from mmaudit.engine.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """\
model:
  checkpoint: ckpt
data:
  manifest: data/manifest.csv
  target: {column: label}
  image: {column: image_path, size: 32}
"""


def test_relative_paths_resolve_against_config_folder(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.yaml"
    path.parent.mkdir()
    path.write_text(MINIMAL)
    cfg = load_config(path)
    assert cfg.model.checkpoint == (tmp_path / "sub" / "ckpt").resolve()
    assert cfg.data.manifest == (tmp_path / "sub" / "data" / "manifest.csv").resolve()
    assert cfg.data.modalities == ["image"]
    assert cfg.runtime.device == "auto"


def test_unknown_key_names_file_line_path_and_close_match(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(MINIMAL.replace("size: 32", "sise: 32"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}:6: unknown key 'data.image.sise'"
    assert err.value.hint == "did you mean 'size'?"


def test_wrong_type_and_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(MINIMAL + "runtime:\n  batch_size: lots\n")
    with pytest.raises(ConfigError, match=r"a.yaml:8: runtime.batch_size: .*integer"):
        load_config(path)
    path.write_text(MINIMAL.replace("  target: {column: label}\n", ""))
    with pytest.raises(ConfigError, match="missing required key 'data.target'"):
        load_config(path)


def test_model_needs_exactly_one_source(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(
        MINIMAL.replace("  checkpoint: ckpt\n", "  checkpoint: ckpt\n  torchscript: m.pt\n")
    )
    with pytest.raises(ConfigError, match="exactly one of"):
        load_config(path)


def test_bad_device_string(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(MINIMAL + "runtime:\n  device: gpu0\n")
    with pytest.raises(ConfigError, match="device must be"):
        load_config(path)


@pytest.mark.parametrize("name", ["sample.yaml", "sample_clean.yaml", "full.yaml"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.data.manifest.is_file()
    assert cfg.model.checkpoint is not None and cfg.model.checkpoint.is_dir()


def test_full_yaml_documents_every_option() -> None:
    """configs/full.yaml is the reference: every field of every section appears in it."""
    import yaml

    from mmaudit.engine.config import AuditConfig

    raw = yaml.safe_load((ROOT / "configs" / "full.yaml").read_text())

    from pydantic import BaseModel

    def model_of(annotation: object) -> type | None:
        for cand in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                return cand
        return None

    def walk(model: type, node: dict, where: str) -> None:
        for fname, field in model.model_fields.items():
            assert fname in node, f"configs/full.yaml lacks {where}{fname}"
            ann = field.annotation
            if getattr(ann, "__origin__", None) is dict and model_of(ann.__args__[1]):
                # a mapping of named entries: together they must show every field
                merged = {k: v for entry in node[fname].values() for k, v in (entry or {}).items()}
                walk(model_of(ann.__args__[1]), merged, f"{where}{fname}.*.")
            elif model_of(ann) is not None and isinstance(node[fname], dict):
                walk(model_of(ann), node[fname], f"{where}{fname}.")

    walk(AuditConfig, raw, "")


def test_full_yaml_documents_every_check_param_and_rule() -> None:
    """Every registered check's params appear in configs/full.yaml with their default value,
    and every default threshold rule is listed (so the file stays the reference)."""
    import yaml

    from mmaudit.checks.registry import load_builtin_checks

    checks = yaml.safe_load((ROOT / "configs" / "full.yaml").read_text())["checks"]
    for name, cls in load_builtin_checks().items():
        assert name in checks, f"configs/full.yaml lacks checks.{name}"
        params = checks[name].get("params", {})
        for field_name, field in cls.Params.model_fields.items():
            assert field_name in params, (
                f"configs/full.yaml lacks checks.{name}.params.{field_name}"
            )
            default = field.get_default(call_default_factory=True)
            documented = cls.Params.model_validate({field_name: params[field_name]})
            assert getattr(documented, field_name) == default, f"{name}.{field_name} default"
        for rule in cls.default_thresholds:
            assert rule in checks[name].get("thresholds", {}), f"{name} rule {rule}"


def test_split_values_take_yaml_numbers_as_the_column_text(tmp_path: Path) -> None:
    """`values: [1]` used to be refused ("Input should be a valid string")."""
    path = tmp_path / "a.yaml"
    path.write_text(MINIMAL + "  split: {column: fold, values: [1, 2.0, 2.5, test]}\n")
    assert load_config(path).data.split.values == ["1", "2", "2.5", "test"]


def test_image_max_value_is_auto_or_a_positive_number(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(MINIMAL)
    assert load_config(path).data.image.max_value == "auto"
    path.write_text(MINIMAL.replace("size: 32}", "size: 32, max_value: 4095}"))
    assert load_config(path).data.image.max_value == 4095.0
    for bad in ("-1", "bits"):
        path.write_text(MINIMAL.replace("size: 32}", f"size: 32, max_value: {bad}}}"))
        with pytest.raises(ConfigError, match=r"a.yaml:6: data.image.max_value"):
            load_config(path)


def _error(path: Path, text: str | bytes) -> ConfigError:
    """The ConfigError that loading ``text`` from ``path`` raises."""
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "\n" not in err.value.one_line()
    return err.value


@pytest.mark.parametrize(
    ("typo", "line", "message", "hint"),
    [
        ("modle:", 1, "unknown key 'modle'", "did you mean 'model'?"),
        ("  targte:", 5, "unknown key 'data.targte'", "did you mean 'target'?"),
    ],
)
def test_misspelt_required_key_is_one_error_with_did_you_mean(
    tmp_path: Path, typo: str, line: int, message: str, hint: str
) -> None:
    """Pydantic sees "missing model" and "unknown modle"; the user made one typo."""
    right = typo.replace("modle", "model").replace("targte", "target")
    err = _error(tmp_path / "a.yaml", MINIMAL.replace(right, typo))
    assert str(err) == f"{tmp_path / 'a.yaml'}:{line}: {message}"
    assert err.hint.startswith(hint) and "required" in err.hint
    assert "more" not in str(err)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "runtime:\n  batch_size: 9\n  seed: 1\n  batch_size: 12\n",
            ":10: key 'runtime.batch_size' appears twice (lines 8 and 10)",
        ),
        (
            "  attributes:\n    site: {}\n    sex: {}\n    site: {kind: categorical}\n",
            ":10: key 'data.attributes.site' appears twice (lines 8 and 10)",
        ),
        (
            "checks:\n  performance: {params: {n_boot: 10, n_boot: 20}}\n",
            ":8: key 'checks.performance.params.n_boot' appears twice on line 8",
        ),
        ("runtime: {}\nruntime: {seed: 1}\n", ":8: key 'runtime' appears twice (lines 7 and 8)"),
    ],
    ids=["top", "attribute", "flow", "section"],
)
def test_duplicate_key_names_both_lines(tmp_path: Path, extra: str, message: str) -> None:
    """PyYAML keeps the last value silently; every nesting level is checked."""
    err = _error(tmp_path / "a.yaml", MINIMAL + extra)
    assert str(err) == f"{tmp_path / 'a.yaml'}{message}"
    assert err.hint.startswith("keep one")


def test_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    """`<<: *anchor` then an explicit key is YAML's way to override, not a duplicate."""
    path = tmp_path / "a.yaml"
    path.write_text(
        MINIMAL
        + "checks:\n  performance: &p {params: {n_boot: 10}}\n"
        + "  subgroups: {<<: *p, enabled: false}\n"
    )
    cfg = load_config(path)
    assert cfg.checks["subgroups"].params == {"n_boot": 10}
    assert not cfg.checks["subgroups"].enabled


def test_non_utf8_config_names_line_and_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    text = MINIMAL.replace("{column: label}", "{column: label}  # café").encode("latin-1")
    err = _error(path, text)
    offset = text.index(b"\xe9")
    assert str(err) == f"{path}:5:33: not UTF-8 text (byte 0xe9 at byte offset {offset})"
    assert err.hint == "save it as UTF-8"
    # the column counts characters: the UTF-8 "é" before the bad byte is one
    err = _error(path, "é: 1  # ".encode() + b"caf\xe9\n")
    assert str(err).startswith(f"{path}:1:12: not UTF-8 text (byte 0xe9 at byte offset 12)")
    err = _error(path, MINIMAL.encode("utf-16"))
    assert str(err) == f"{path}: the config is UTF-16 text, not UTF-8"
    assert err.hint == "save it as UTF-8"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (None, "runtime:\n  seed: -1\n", ":8: runtime.seed: must be >= 0 (got -1)"),
        (None, "runtime:\n  seed: 4294967296\n", ":8: runtime.seed: must be <= 4294967295"),
        (None, "runtime:\n  batch_size: 0\n", ":8: runtime.batch_size: must be >= 1 (got 0)"),
        (None, "runtime:\n  num_workers: -2\n", ":8: runtime.num_workers: must be >= 0"),
        (None, "runtime:\n  max_samples: 0\n", ":8: runtime.max_samples: must be >= 1"),
        (None, "report:\n  embeddings_max_mb: -1\n", ":8: report.embeddings_max_mb: must be >= 0"),
        (
            None,
            "  text: {column: report, tokenizer: tok, max_length: 0}\n",
            ":7: data.text.max_length: must be >= 2 (got 0)",
        ),
        ("size: 32", "size: 0", ":6: data.image.size: must be >= 8 (got 0)"),
        ("size: 32", "size: 32, std: [0.2, 0]", ":6: data.image.std[1]: must be > 0 (got 0)"),
        ("size: 32", "size: 32, mean: [.nan]", ":6: data.image.mean[0]: must be a finite number"),
        (
            None,
            "  tabular: {columns: [wbc], normalization: given, mean: {wbc: 8}, std: {wbc: 0}}\n",
            ":7: data.tabular.std.wbc: must be > 0 (got 0)",
        ),
    ],
)
def test_numeric_ranges_are_one_readable_line(
    tmp_path: Path, old: str | None, new: str, message: str
) -> None:
    path = tmp_path / "a.yaml"
    err = _error(path, MINIMAL + new if old is None else MINIMAL.replace(old, new))
    assert str(err).startswith(f"{path}{message}"), str(err)
    assert "Input should" not in str(err) and err.hint


def test_every_numeric_option_has_a_range() -> None:
    """A new int / float option must declare its range (``Field(ge=...)``), so that a bad
    value is refused with one line instead of failing deep inside a check."""
    import typing

    from pydantic.fields import FieldInfo

    import mmaudit.engine.config as config

    # free-valued numbers: normalisation means, bins (checked as increasing edges) and
    # max_value and num_workers ("auto" or a number, checked by their own validators)
    free = {
        "ImageConfig.mean",
        "TabularConfig.mean",
        "AttributeConfig.bins",
        "ImageConfig.max_value",
        "RuntimeConfig.num_workers",
    }

    def numeric(annotation: object) -> bool:
        if typing.get_origin(annotation) is typing.Literal:
            return False
        return annotation in (int, float) or any(numeric(a) for a in typing.get_args(annotation))

    def bounded(annotation: object, metadata: list[object]) -> bool:
        for m in metadata:
            if isinstance(m, FieldInfo) and bounded(None, m.metadata):
                return True
            if any(hasattr(m, bound) for bound in ("ge", "gt")):
                return True
        if typing.get_origin(annotation) is typing.Annotated:
            inner, *meta = typing.get_args(annotation)
            return bounded(inner, meta)
        return any(bounded(a, []) for a in typing.get_args(annotation))

    unbounded = [
        f"{model.__name__}.{name}"
        for model in vars(config).values()
        if isinstance(model, type) and issubclass(model, config.Strict)
        for name, field in model.model_fields.items()
        if f"{model.__name__}.{name}" not in free
        and numeric(field.annotation)
        and not bounded(field.annotation, field.metadata)
    ]
    assert unbounded == []


@pytest.mark.parametrize(
    ("entry", "what"), [("site:", "is empty"), ("site: continuous", "must be")]
)
def test_attribute_entry_that_is_not_a_mapping(tmp_path: Path, entry: str, what: str) -> None:
    path = tmp_path / "a.yaml"
    err = _error(path, MINIMAL + f"  attributes:\n    sex: {{}}\n    {entry}\n")
    assert str(err).startswith(f"{path}:9: data.attributes.site {what}")
    assert err.hint.startswith("write `site: {kind: categorical}`")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{kind: continuous, bins: [40, 60, 6]}", "must be increasing edges, got [40, 60, 6]"),
        ("{kind: continuous, bins: []}", "give the bin edges"),
        ("{bins: [40]}", "only a kind: continuous attribute has bins"),
    ],
)
def test_attribute_bins_are_increasing_edges_of_a_continuous_attribute(
    tmp_path: Path, entry: str, message: str
) -> None:
    path = tmp_path / "a.yaml"
    err = _error(path, MINIMAL + f"  attributes:\n    age: {entry}\n")
    assert str(err).startswith(f"{path}:8: data.attributes.age.bins: {message}"), str(err)


def test_empty_section_means_defaults_but_an_empty_value_is_named(tmp_path: Path) -> None:
    """`runtime:` with every line commented out is the defaults; `batch_size:` with no value
    and an empty required section are one line each."""
    path = tmp_path / "a.yaml"
    path.write_text(MINIMAL + "  attributes:\nruntime:\nreport: null\n")
    cfg = load_config(path)
    assert cfg.runtime.batch_size == 64 and cfg.data.attributes == {}
    err = _error(path, MINIMAL + "runtime:\n  batch_size:\n")
    assert str(err) == f"{path}:8: runtime.batch_size is empty"
    assert "remove the line for the default" in err.hint
    err = _error(path, MINIMAL.replace("{column: label}", ""))
    assert str(err) == f"{path}:5: data.target is empty"


def test_fail_on_skipped_is_a_runtime_option(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(MINIMAL)
    assert load_config(path).runtime.fail_on_skipped is False
    path.write_text(MINIMAL + "runtime:\n  fail_on_skipped: true\n")
    assert load_config(path).runtime.fail_on_skipped is True


@pytest.mark.parametrize("command", ["run", "validate"])
def test_cli_bad_config_is_one_line_exit_2(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from mmaudit.cli import main

    path = tmp_path / "a.yaml"
    path.write_text(MINIMAL + "runtime:\n  seed: -1\n")
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exc:
        main([command, str(path), *(["-o", str(out)] if command == "run" else [])])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert (
        err == f"error: {path}:8: runtime.seed: must be >= 0 (got -1) (the default is 0;"
        " configs/full.yaml documents every option)\n"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("data", "line", "message", "hint"),
    [
        (
            "  tabular: {columns: [wbc, wbc, crp]}\n",
            7,
            "data.tabular.columns[1]: 'wbc' is listed twice (items 0 and 1)",
            "list each column once",
        ),
        (
            "  tabular:\n    columns:\n      - wbc\n      - label\n",
            10,
            "data.tabular.columns[1]: column 'label' is the target (data.target.column)",
            "remove it from data.tabular.columns",
        ),
        (
            "  attributes:\n    site: {}\n    label: {}\n",
            9,
            "data.attributes.label: column 'label' is the target (data.target.column)",
            "remove data.attributes.label",
        ),
        (
            "  attributes:\n    outcome: {column: label}\n",
            8,
            "data.attributes.outcome: column 'label' is the target",
            "remove data.attributes.outcome",
        ),
    ],
)
def test_column_listed_twice_or_target_reused_is_refused(
    tmp_path: Path, data: str, line: int, message: str, hint: str
) -> None:
    """Accepted silently before: a lab listed twice (fed and ranked twice), the label among
    the labs (the model is handed the answer) or as an attribute (one class per group)."""
    path = tmp_path / "a.yaml"
    err = _error(path, MINIMAL + data)
    assert str(err).startswith(f"{path}:{line}: {message}"), str(err)
    assert err.hint == hint


@pytest.mark.parametrize(
    ("text", "line", "written", "hint"),
    [
        ("  id: yes\n", 7, "yes", "quote it: id: 'yes'"),
        ("  patient: off\n", 7, "off", "quote it: patient: 'off'"),
        ("  split: {column: fold, values: [a, no]}\n", 7, "no", "quote it: - 'no'"),
    ],
)
def test_yaml_boolean_where_text_is_wanted_says_to_quote_it(
    tmp_path: Path, text: str, line: int, written: str, hint: str
) -> None:
    """``id: yes`` is a boolean to YAML 1.1: pydantic's "valid string (got True)" did not
    say why; the line now says what YAML read and how to write it."""
    path = tmp_path / "a.yaml"
    err = _error(path, MINIMAL + text)
    assert f"{path}:{line}: data." in str(err)
    assert f"YAML reads {written} as a boolean, not text" in str(err)
    assert err.hint == hint


@pytest.mark.parametrize("value", ["lots", 0, -2, True])
def test_memory_budget_is_a_positive_number_or_auto(value: object) -> None:
    from pydantic import ValidationError

    from mmaudit.engine.config import RuntimeConfig

    with pytest.raises(ValidationError, match=r"must be a number of MB > 0 or auto \(got "):
        RuntimeConfig(memory_budget_mb=value)  # type: ignore[arg-type]
    assert RuntimeConfig().memory_budget_mb == "auto"
    assert RuntimeConfig(memory_budget_mb=96).memory_budget_mb == 96.0
