"""Config loading: strict keys, did-you-mean, line numbers, path resolution, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmaudit.config import load_config
from mmaudit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

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
    assert str(err.value) == f"{path}:6: unknown key 'data.image.sise'; did you mean 'size'?"


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

    from mmaudit.config import AuditConfig

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

    from mmaudit.check import load_builtin_checks

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
