"""CAM maps per second: mmaudit vs pytorch-grad-cam vs captum, same model, batch and cache.

Two models, each raced in its own interleaved rounds:

* ``sample``: the bundled ``shortcut`` checkpoint (64x64 image + report + labs), its
  detected Grad-CAM layer, the first ``--batch`` (64) rows of the sample;
* ``resnet50``: a bring-your-own model at 224x224 -- a timm ResNet-50 image encoder
  (random init, ``pretrained=False``) plus a tiny report branch (mean of token
  embeddings) and a labs MLP, concatenated into a two-layer head -- with random images,
  ``--batch-224`` (16) rows and the layer given explicitly: ``layer4``, the feature map
  that feeds the global pool.

**Every contender gets the same encoder cache.** The report and lab encoders are
swapped for their cached outputs (mmaudit's ``ImageForward``, the mechanism the check
uses); the peers wrap that same cached forward as an ``image -> logits`` module. So
every contender runs the same forward and the race is between the CAM machinery only.

Contenders, each producing maps at the image resolution for the class each row is
predicted as:

* three maps (Grad-CAM, HiResCAM, LayerCAM), **the headline**:
  ``mmaudit``: ``cams.compute_cams`` as the check runs it, with one forward and one
  ``autograd.grad`` with respect to the layer output for all three maps;
  ``pytorch-grad-cam``: ``GradCAM``, ``HiResCAM`` and ``LayerCAM`` called one after the
  other, each with its own forward and ``loss.backward()``. captum has no HiResCAM or
  LayerCAM, so it is not in this race;
* one map (Grad-CAM): ``mmaudit``; ``pytorch-grad-cam`` ``GradCAM`` on the batch (one
  forward, ``loss.backward()`` through the whole network, numpy maps min-max scaled and
  resized with OpenCV); captum ``LayerGradCam`` batched (one forward, ``autograd.grad``
  with respect to the layer, like mmaudit) and looped per sample;
* ``mmaudit, no encoder cache`` (the whole model runs): what the cache is worth; it is
  not a peer.

The per-sample loop and the no-cache row are left out of the 224x224 race unless
``--all-224`` (the slowest rows on a CPU). The ResNet model's report / labs branch and
head biases are scaled down at init so the image decides each prediction; otherwise the
Grad-CAM of the predicted class is blank for every row of a random-init model.

Ratios lead: each is taken within a round (same load on a shared machine) and printed as
the median over rounds with its range; seconds per call follow. Before timing, each
peer's maps are compared with mmaudit's (Spearman rho per map, median and minimum; maps
blank in both count as equal) so the race is between equal outputs.

    python benchmarks/saliency_speed.py [--models sample,resnet50] [--device cpu|cuda]
        [--precision fp32|bf16] [--batch 64] [--batch-224 16] [--repeats 5] [--warmup 1]
        [--all-224]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
CAMS = ("gradcam", "hirescam", "layercam")


@dataclass
class Setup:
    """One model ready to race: the adapter, one batch on the device, the cached report /
    lab encoder outputs (dataset order), the CAM layer and the class explained per row."""

    title: str
    adapter: Any  # mmaudit.engine.adapter.ModelAdapter
    batch: Any  # mmaudit.engine.data.Batch
    fixed: dict[str, torch.Tensor]
    layer: str
    cls: torch.Tensor
    info: Any  # mmaudit.methods.cams.GridInfo
    full: bool = True  # every contender (False: not the per-sample loop nor the no-cache row)


def cached_outputs(adapter: Any, batch: Any, n_rows: int) -> tuple[dict, torch.Tensor]:
    """The report / lab encoder outputs of ``batch`` in an (n_rows, ...) table at the
    batch's dataset indices, and the predicted class per row."""
    names = [k for k in ("text", "tabular") if k in adapter.layers]
    with torch.no_grad(), adapter.capture(names) as store:
        z = adapter.logits(batch)
        out = {k: store[k].float() for k in names}
    fixed = {k: torch.zeros(n_rows, *v.shape[1:]) for k, v in out.items()}
    for k, v in out.items():
        fixed[k][batch.index.cpu()] = v.cpu()
    cls = (z[:, 0] > 0).long() if z.shape[1] == 1 else z.argmax(1)
    return fixed, cls


def sample_setup(args: argparse.Namespace) -> Setup:
    """The bundled ``shortcut`` checkpoint on the first ``args.batch`` rows of the sample."""
    from mmaudit.engine.config_file import load_config
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.loading import load_model
    from mmaudit.methods.cams import grid_info

    cfg = load_config(ROOT / "configs" / "sample.yaml")
    cfg.runtime.device = args.device
    cfg.runtime.precision = args.precision
    ds = build_dataset(cfg)
    adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
    n = min(args.batch, len(ds))
    batch = ds.collate([ds[i] for i in range(n)]).to(adapter.device)
    fixed, cls = cached_outputs(adapter, batch, len(ds))
    title = f"sample shortcut checkpoint, 64x64, batch {n}"
    return Setup(title, adapter, batch, fixed, adapter.layers["gradcam"], cls, grid_info(adapter))


class ResNetModel(nn.Module):
    """224x224 image (timm ResNet-50, random init) + report + labs -> one logit."""

    def __init__(self, vocab: int = 1000, n_labs: int = 5, dim: int = 64) -> None:
        super().__init__()
        import timm

        self.image_encoder = timm.create_model("resnet50", pretrained=False, num_classes=0)
        self.text_encoder = nn.EmbeddingBag(vocab, dim, mode="mean")
        self.lab_mlp = nn.Sequential(nn.Linear(n_labs, dim), nn.ReLU())
        width = self.image_encoder.num_features + 2 * dim
        self.head = nn.Sequential(nn.Linear(width, 128), nn.ReLU(), nn.Linear(128, 1))
        # Random init would let the report / labs branch and the head's biases decide the
        # sign of the logit, and the Grad-CAM of the predicted class would be blank for
        # every row: scale those down so the image decides, as in an image-led model.
        with torch.no_grad():
            self.text_encoder.weight.mul_(0.01)
            for p in self.lab_mlp.parameters():
                p.mul_(0.01)
            for m in self.head:
                if isinstance(m, nn.Linear):
                    m.bias.zero_()

    def forward(
        self, image: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, labs: torch.Tensor
    ) -> torch.Tensor:
        text = self.text_encoder(ids)
        return self.head(torch.cat([self.image_encoder(image), text, self.lab_mlp(labs)], 1))


def resnet_setup(args: argparse.Namespace) -> Setup:
    """The 224x224 ResNet-50 bring-your-own model on ``args.batch_224`` random studies."""
    from mmaudit.engine.adapter import ModelAdapter, resolve_device
    from mmaudit.engine.data import Batch
    from mmaudit.methods.cams import GridInfo

    torch.manual_seed(0)
    n = args.batch_224
    module = ResNetModel()
    adapter = ModelAdapter(
        module,
        source="benchmark: timm resnet50 + report + labs",
        modalities=("image", "text", "tabular"),
        keywords={"image": "image", "text": "ids", "text_mask": "mask", "tabular": "labs"},
        layers={
            "image": "image_encoder",
            "text": "text_encoder",
            "tabular": "lab_mlp",
            "gradcam": "image_encoder.layer4",
        },
        detected={},
        device=resolve_device(args.device),
        precision=args.precision,
    )
    # smooth random images: low-frequency noise, so the maps have structure to rank
    low = torch.randn(n, 3, 14, 14)
    image = nn.functional.interpolate(low, size=(224, 224), mode="bilinear")
    image = image + 0.1 * torch.randn_like(image)
    batch = Batch(
        index=torch.arange(n),
        present=torch.ones(n, 3, dtype=torch.bool),
        target=torch.zeros(n),
        image=image,
        input_ids=torch.randint(1, 1000, (n, 40)),
        attention_mask=torch.ones(n, 40, dtype=torch.long),
        tabular=torch.randn(n, 5),
        modalities=("image", "text", "tabular"),
    ).to(adapter.device)
    fixed, cls = cached_outputs(adapter, batch, n)
    title = f"timm resnet50 (random init) + report + labs, 224x224, batch {n}"
    layer = "image_encoder.layer4"
    return Setup(title, adapter, batch, fixed, layer, cls, GridInfo(), full=False)


def contenders(s: Setup, bf16: bool, full: bool = True) -> dict[str, Callable[[], dict[str, Any]]]:
    """Name -> a call returning {CAM method: maps (B, H, W) at the image size}; ``full``
    False leaves out captum per sample and mmaudit without the encoder cache."""
    from mmaudit.methods.cams import compute_cams, upsample
    from mmaudit.methods.image_forward import ImageForward

    adapter, batch, cls, info = s.adapter, s.batch, s.cls, s.info
    size = tuple(batch.image.shape[-2:])
    layer = adapter.get(s.layer)
    runner = ImageForward(adapter, s.fixed)
    n = len(batch)

    def ours(methods: tuple[str, ...], cache: bool) -> Callable[[], dict[str, Any]]:
        def call() -> dict[str, Any]:
            layers = {m: s.layer for m in methods}
            if cache:
                with runner.active():
                    cams, _ = compute_cams(
                        adapter, lambda x: runner(batch, x), batch.image, cls, layers, info
                    )
            else:

                def forward(x: torch.Tensor) -> torch.Tensor:
                    return adapter.logits(batch.replace(image=x))

                cams, _ = compute_cams(adapter, forward, batch.image, cls, layers, info)
            return {m: upsample(c, size) for m, c in cams.items()}

        return call

    class CachedImageModel(nn.Module):
        """image -> (B, 2) logits [-z, z] of the rows ``rows``: the same cached forward
        as mmaudit's (report and lab encoders replaced by their cached outputs)."""

        def __init__(self, rows: slice) -> None:
            super().__init__()
            self.model = adapter.module  # so .eval() / .zero_grad() reach the real model
            self.part = batch.select(rows)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = runner(self.part, x)
            return torch.cat([-z, z], dim=1) if z.shape[1] == 1 else z

    # pytorch-grad-cam turns the hooked tensors into numpy, which has no bfloat16
    reshape = (lambda t: t.float()) if bf16 else None

    def package(methods: tuple[str, ...]) -> Callable[[], dict[str, Any]]:
        def call() -> dict[str, Any]:
            import pytorch_grad_cam as pgc
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

            kinds = {"gradcam": pgc.GradCAM, "hirescam": pgc.HiResCAM, "layercam": pgc.LayerCAM}
            targets = [ClassifierOutputTarget(int(c)) for c in cls]
            out = {}
            with runner.active():
                for m in methods:
                    model = CachedImageModel(slice(0, n))
                    with kinds[m](model, [layer], reshape_transform=reshape) as cam:
                        out[m] = cam(input_tensor=batch.image, targets=targets)
            return out

        return call

    def captum_batched() -> dict[str, Any]:
        from captum.attr import LayerAttribution, LayerGradCam

        with runner.active():
            a = LayerGradCam(CachedImageModel(slice(0, n)), layer).attribute(
                batch.image, target=cls, relu_attributions=True
            )
        return {"gradcam": LayerAttribution.interpolate(a, size, interpolate_mode="bilinear")}

    def captum_loop() -> dict[str, Any]:
        from captum.attr import LayerAttribution, LayerGradCam

        maps = []
        with runner.active():
            for i in range(n):
                gc = LayerGradCam(CachedImageModel(slice(i, i + 1)), layer)
                a = gc.attribute(batch.image[i : i + 1], target=int(cls[i]), relu_attributions=True)
                maps.append(LayerAttribution.interpolate(a, size, interpolate_mode="bilinear"))
        return {"gradcam": torch.cat(maps)}

    calls = {
        "mmaudit, 3 maps": ours(CAMS, cache=True),
        "pytorch-grad-cam, 3 maps": package(CAMS),
        "mmaudit": ours(("gradcam",), cache=True),
        "pytorch-grad-cam": package(("gradcam",)),
        "captum LayerGradCam, batched": captum_batched,
        "captum LayerGradCam, per sample": captum_loop,
        "mmaudit, no encoder cache": ours(("gradcam",), cache=False),
    }
    if not full:  # the slowest rows, left out of the 224x224 race unless asked for
        del calls["captum LayerGradCam, per sample"], calls["mmaudit, no encoder cache"]
    return calls


def as_maps(x: Any) -> np.ndarray:
    """(B, H, W) float64 numpy from a tensor or array, channel axis dropped."""
    t = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return t.reshape(t.shape[0], -1).astype(np.float64)


def agreement(ours: Any, theirs: Any) -> tuple[float, float, int]:
    """Median and minimum Spearman rho over maps, and the number blank in both (rho 1)."""
    from scipy.stats import spearmanr

    a, b = as_maps(ours), as_maps(theirs)
    rhos, blank = [], 0
    for x, y in zip(a, b, strict=True):
        flat_x, flat_y = np.ptp(x) == 0, np.ptp(y) == 0
        if flat_x and flat_y:
            blank += 1
            rhos.append(1.0)
        elif flat_x or flat_y:
            rhos.append(0.0)
        else:
            rhos.append(float(spearmanr(x, y).statistic))
    return float(np.median(rhos)), float(np.min(rhos)), blank


def race(s: Setup, args: argparse.Namespace) -> None:
    """Check that the maps agree, time interleaved rounds and print ratios, then seconds."""
    dev = s.adapter.device
    full = s.full or args.all_224
    calls = contenders(s, args.precision == "bf16" and dev.type == "cuda", full)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    threads = torch.get_num_threads()
    precision = s.adapter.effective_precision
    print(f"\n{s.title}; layer {s.layer}; {name}, {threads} threads, {precision}")
    maps = {k: fn() for k, fn in calls.items()}  # first calls double as a warm-up
    print("  maps agree (Spearman rho per map vs mmaudit's: median / min, blank in both):")
    for method in CAMS:
        rho = agreement(maps["mmaudit, 3 maps"][method], maps["pytorch-grad-cam, 3 maps"][method])
        print(f"    {method:9s} pytorch-grad-cam {rho[0]:.4f} / {rho[1]:.4f}, {rho[2]} blank")
    for key in ("captum LayerGradCam, batched", "captum LayerGradCam, per sample"):
        if key not in maps:
            continue
        rho = agreement(maps["mmaudit"]["gradcam"], maps[key]["gradcam"])
        print(f"    gradcam   {key:32s} {rho[0]:.4f} / {rho[1]:.4f}, {rho[2]} blank")
    del maps
    for _ in range(args.warmup - 1):
        for fn in calls.values():
            fn()
    # interleaved rounds, so a load change on a shared machine hits every contender alike
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(args.repeats):
        for key, fn in calls.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[key].append(time.perf_counter() - t)

    def ratio(label: str, slow: str, fast: str) -> None:
        if slow not in times:
            return
        r = [a / b for a, b in zip(times[slow], times[fast], strict=True)]
        print(f"    {label:45s} {statistics.median(r):6.2f}x  ({min(r):.2f}-{max(r):.2f})")

    print(f"  speed-up, median over {args.repeats} rounds (range); > 1: mmaudit is faster")
    ratio("3 maps vs pytorch-grad-cam, 3 maps", "pytorch-grad-cam, 3 maps", "mmaudit, 3 maps")
    print("      (captum has LayerGradCam only: no HiResCAM, no LayerCAM)")
    for peer in (
        "pytorch-grad-cam",
        "captum LayerGradCam, batched",
        "captum LayerGradCam, per sample",
    ):
        ratio(f"1 map vs {peer}", peer, "mmaudit")
    ratio("mmaudit 3 maps cost / 1 map cost", "mmaudit, 3 maps", "mmaudit")
    ratio("mmaudit without / with the encoder cache", "mmaudit, no encoder cache", "mmaudit")
    print("  seconds per batch (median) and maps/s")
    for key, v in times.items():
        sec = statistics.median(v)
        per = 3 if key.endswith("3 maps") else 1
        print(f"    {key:34s} {sec:8.3f} s  {per * len(s.batch) / sec:8.1f} maps/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sample,resnet50", help="sample, resnet50 or both")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=64, help="rows of the sample model")
    parser.add_argument("--batch-224", type=int, default=16, help="rows of the ResNet-50 model")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per model")
    parser.add_argument(
        "--all-224", action="store_true", help="ResNet-50 too: captum per sample, no cache"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (>= 1)")
    args = parser.parse_args()
    builders = {"sample": sample_setup, "resnet50": resnet_setup}
    for key in args.models.split(","):
        if key not in builders:
            parser.error(f"--models: unknown model {key!r}; use sample, resnet50 or both")
        race(builders[key](args), args)


if __name__ == "__main__":
    main()
