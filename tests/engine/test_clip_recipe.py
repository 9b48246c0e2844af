"""The CLIP-style zero-shot recipe (``examples/clip_zero_shot.py`` / ``.yaml``, documented in
``docs/own-model.md``): a tiny ``transformers`` ``CLIPModel`` built from a config offline,
wrapped so that its prompt similarities are the logits, audited end to end by
``mmaudit run`` on the bundled sample's test rows.

Known answers: the logits equal the similarities computed from ``CLIPModel``'s own forward
(its ``image_embeds`` / ``text_embeds`` / ``logit_scale``) on images preprocessed here by
hand; the CAMs equal pytorch-grad-cam's with its ViT reshape recipe; the checks that need
the report, the labs or two modalities are skipped with the reason the docs give.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from mmaudit.checks.registry import load_builtin_checks
from mmaudit.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
RECIPE = EXAMPLES / "clip_zero_shot.yaml"
N_ROWS = 48

#: what the recipe audits, and what it cannot (docs/own-model.md says why)
APPLY = ("performance", "saliency", "probing", "embedding", "subgroups")
SKIPPED = {
    "ablation": "needs at least 2 modalities",
    "attribution": "needs one of the modalities ['text', 'tabular']",
    "attention": "needs the modalities ['text']",
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def recipe() -> Iterator[Any]:
    """The example module, imported from ``examples/`` the way ``python_path: [.]`` does."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import clip_zero_shot

        yield clip_zero_shot
    finally:
        sys.path.remove(str(EXAMPLES))


def _recipe_config() -> dict[str, Any]:
    cfg = yaml.safe_load(RECIPE.read_text())
    cfg["model"]["python_path"] = [str(EXAMPLES)]
    cfg["data"]["manifest"] = str(ROOT / "sample_data" / "manifest.csv")
    return cfg


@pytest.fixture(scope="module")
def trained(recipe: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """The recipe's model with other weights than the factory's own init (seed 1, a logit
    scale of 10), saved as the state_dict ``model.weights`` loads: logits that match it
    prove the weights were loaded, not the factory's random init."""
    from safetensors.torch import save_file

    kwargs = _recipe_config()["model"]["kwargs"]
    model = recipe.build(**{**kwargs, "seed": 1}).eval()
    with torch.no_grad():
        model.clip.logit_scale.fill_(float(np.log(10.0)))
    path = tmp_path_factory.mktemp("clip") / "clip.safetensors"
    save_file(model.state_dict(), path)
    return model, path


def audit_config(weights: Path) -> dict[str, Any]:
    """The recipe config with ``weights``, on the CPU, its expensive parameters reduced."""
    cfg = _recipe_config()
    cfg["model"]["weights"] = str(weights)
    cfg["runtime"]["device"] = "cpu"
    cfg["checks"] = {
        "performance": {"params": {"n_boot": 100}},
        "saliency": {
            "params": {
                "methods": ["gradcam", "hirescam"],
                "n_boot": 100,
                "n_permutations": 200,
                "hotspot_null": 20,
                "sanity_samples": 8,
                "faithfulness_samples": 8,
            }
        },
        "probing": {
            "params": {"n_boot": 100, "n_folds": 3, "erasure_draws": 4, "random_baseline": False}
        },
        "embedding": {
            "params": {
                "n_boot": 100,
                "n_permutations": 100,
                "silhouette_permutations": 0,
                "projections": [],
                "exemplar_errors": 0,
                "exemplar_random": 0,
                "layers": ["embedding"],
                "clustering": "none",
            }
        },
        "subgroups": {
            "params": {
                "n_boot": 100,
                "n_permutations": 100,
                "min_group_size": 10,
                "min_class_size": 3,
            }
        },
        **{name: {} for name in SKIPPED},
    }
    return cfg


@pytest.fixture(scope="module")
def report(trained: tuple[nn.Module, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mmaudit run`` on :func:`audit_config` for the first ``N_ROWS`` test rows."""
    cfg = audit_config(trained[1])
    folder = tmp_path_factory.mktemp("clip_run")
    config = folder / "audit.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = folder / "report"
    args = ["run", str(config), "-o", str(out), "--fail-on", "never", "--no-progress"]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--max-samples", str(N_ROWS)])
    assert exc.value.code in (0, None)
    return out


def _checks(report: Path) -> dict[str, Any]:
    import json

    return json.loads((report / "report.json").read_text())["checks"]


def test_every_check_has_a_status_and_the_image_checks_ran(report: Path) -> None:
    checks = _checks(report)
    assert set(checks) == set(load_builtin_checks())
    for name in APPLY:
        assert checks[name]["status"] in ("pass", "warn", "fail"), (name, checks[name])
        assert checks[name]["rows_used"] == N_ROWS, name


def test_text_labs_and_modality_checks_are_skipped_with_the_documented_reason(
    report: Path,
) -> None:
    checks = _checks(report)
    for name, reason in SKIPPED.items():
        assert checks[name]["status"] == "skipped", name
        assert reason in checks[name]["reason"], (name, checks[name]["reason"])
    docs = (ROOT / "docs" / "own-model.md").read_text()
    assert "## A CLIP-style zero-shot model" in docs
    section = docs.split("## A CLIP-style zero-shot model")[1]
    assert all(f"`{name}`" in section for name in (*APPLY, *SKIPPED))


def _preprocessed(ids: list[str], recipe: Any) -> torch.Tensor:
    """The sample's PNGs as the recipe's data section says, done here by hand: grey in
    [0, 1] repeated to RGB, then CLIP's mean / std (the images are already 64 px)."""
    manifest = pd.read_csv(ROOT / "sample_data" / "manifest.csv").set_index("id")
    mean = torch.tensor(recipe.CLIP_MEAN)[:, None, None]
    std = torch.tensor(recipe.CLIP_STD)[:, None, None]
    images = []
    for i in ids:
        grey = np.asarray(Image.open(ROOT / "sample_data" / manifest.loc[i, "image_path"]))
        assert grey.shape == (64, 64)
        x = torch.from_numpy(grey.astype(np.float32) / 255.0)[None].expand(3, -1, -1)
        images.append((x - mean) / std)
    return torch.stack(images)


def _clip_similarities(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class logits from ``CLIPModel.forward``'s own outputs: its normalised image and
    prompt embeddings, the prompts averaged per class and renormalised, times its scale."""
    with torch.no_grad():
        out = model.clip(
            input_ids=model.prompt_ids, attention_mask=model.prompt_mask, pixel_values=images
        )
        per_class = torch.stack(
            [out.text_embeds[model.prompt_class == k].mean(0) for k in range(model.n_classes)]
        )
        per_class = per_class / per_class.norm(dim=-1, keepdim=True)
        return model.clip.logit_scale.exp() * out.image_embeds @ per_class.t()


def test_the_logits_are_the_prompt_similarities(
    report: Path, trained: tuple[nn.Module, Path], recipe: Any
) -> None:
    pred = pd.read_parquet(report / "samples" / "predictions.parquet")
    assert len(pred) == N_ROWS
    images = _preprocessed(pred["id"].tolist(), recipe)
    expected = _clip_similarities(trained[0], images).numpy()
    got = pred[["logit.0", "logit.1"]].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # the factory's own random init is another model: its similarities differ
    kwargs = _recipe_config()["model"]["kwargs"]
    fresh = recipe.build(**kwargs).eval()
    assert not np.allclose(got, _clip_similarities(fresh, images).numpy(), atol=1e-2)


def test_one_prompt_per_class_gives_clip_logits_per_image(recipe: Any) -> None:
    kwargs = {**_recipe_config()["model"]["kwargs"], "prompts": ["no opacity", "opacity"]}
    model = recipe.build(**kwargs).eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ours = model(images)
        theirs = model.clip(
            input_ids=model.prompt_ids, attention_mask=model.prompt_mask, pixel_values=images
        ).logits_per_image
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert _recipe_config()["model"]["layers"] == recipe.layers_for(kwargs["n_layers"])
    # the prompts were tokenised into real words, not [UNK]
    assert (model.prompt_ids != 1).all()
    with pytest.raises(ValueError, match="at least two classes"):
        recipe.build(**{**kwargs, "prompts": ["opacity"]})


def test_gradcam_maps_are_spatial_on_the_vit_token_grid(report: Path) -> None:
    metrics = _checks(report)["saliency"]["metrics"]
    assert metrics["cam_grid.gradcam"] == "8x8"  # 64 px / patch 8, class token dropped
    dead = metrics["dead_maps.gradcam"]
    assert (dead["value"] if isinstance(dead, dict) else dead) < 0.5
    maps = np.load(report / "samples" / "saliency.npz")["map.gradcam"]
    assert maps.ndim == 3 and maps.shape[0] == N_ROWS and min(maps.shape[1:]) > 1
    flat = maps.reshape(len(maps), -1)
    assert (flat.std(axis=1) > 0).mean() > 0.5  # maps vary in space, not constants


def test_recipe_gradcam_equals_pytorch_grad_cam_vit_recipe(
    trained: tuple[nn.Module, Path], recipe: Any
) -> None:
    """The layer the recipe names, through mmaudit's CAMs, against pytorch-grad-cam's
    documented ViT use: the last block's first norm, class token dropped by the reshape."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from mmaudit.engine.adapter import ModelAdapter
    from mmaudit.methods.cams import compute_cams

    model = trained[0]
    layer = _recipe_config()["model"]["layers"]["gradcam"]
    adapter = ModelAdapter(
        model,
        source="test",
        modalities=("image",),
        keywords={"image": "pixel_values"},
        layers={"gradcam": layer},
        detected={},
        device=torch.device("cpu"),
    )
    torch.manual_seed(0)
    x = torch.randn(4, 3, 64, 64)
    cls = torch.tensor([0, 1, 1, 0])
    ours, _ = compute_cams(adapter, model, x, cls, {"gradcam": "gradcam"})
    assert ours["gradcam"].shape == (4, 8, 8)

    def reshape(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:].reshape(t.shape[0], 8, 8, t.shape[2]).permute(0, 3, 1, 2)

    cam = GradCAM(model=model, target_layers=[adapter.get("gradcam")], reshape_transform=reshape)
    try:
        targets = [ClassifierOutputTarget(int(c)) for c in cls]
        outputs = cam.activations_and_grads(x)
        model.zero_grad()
        sum(t(o) for t, o in zip(targets, outputs, strict=True)).backward()
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        ref = np.maximum(cam.get_cam_image(x, None, targets, acts, grads, False), 0)
    finally:
        cam.activations_and_grads.release()
    assert ref.reshape(len(ref), -1).std(axis=1).min() > 0  # no blank or constant map
    np.testing.assert_allclose(ours["gradcam"].numpy(), ref, rtol=1e-4, atol=1e-6)
    assert adapter.hook_count() == 0
