"""Grad-CAM maps per second: mmaudit vs pytorch-grad-cam vs captum, same model and batch.

The model is the bundled ``shortcut`` checkpoint (image + report + labs), the layer its
detected Grad-CAM layer, the batch 64 test rows of the sample, the device the one given.
Every contender produces one Grad-CAM map per image at the image resolution, for the
class each sample is predicted as:

* ``mmaudit``: ``cams.compute_cams`` as the check runs it -- one forward and one
  ``autograd.grad`` with respect to the layer output per batch, the report and lab
  encoders swapped for their cached outputs (``ImageForward``), bilinear upsampling;
* ``mmaudit (no encoder cache)``: the same with the whole model running (for reference);
* ``pytorch-grad-cam``: ``GradCAM(model, [layer])`` called on the batch (its normal use:
  one forward, ``loss.backward()``, numpy maps min-max scaled and resized with OpenCV);
* ``captum LayerGradCam, per sample``: ``LayerGradCam.attribute`` looped over the samples
  (as the issue asks), then ``LayerAttribution.interpolate``;
* ``captum LayerGradCam, batched``: the same on the whole batch (printed for reference).

Peers wrap the multimodal model as ``image -> logits`` with the batch's other inputs
fixed, which is what a user of those packages would write. Ratios are against the
fastest of the three peers the issue names (pytorch-grad-cam, captum per sample) and,
separately, against captum batched.

    python benchmarks/saliency_speed.py [--device cpu|cuda] [--precision fp32|bf16]
        [--batch 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from mmaudit.engine.config_file import load_config
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.loading import load_model
    from mmaudit.methods.cams import compute_cams, grid_info, upsample
    from mmaudit.methods.image_forward import ImageForward

    cfg = load_config(ROOT / "configs" / "sample.yaml")
    cfg.runtime.device = args.device
    cfg.runtime.precision = args.precision
    ds = build_dataset(cfg)
    adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
    dev = adapter.device
    n = min(args.batch, len(ds))
    batch = ds.collate([ds[i] for i in range(n)]).to(dev)
    size = tuple(batch.image.shape[-2:])
    layer_name = adapter.layers["gradcam"]
    layer = adapter.get("gradcam")
    info = grid_info(adapter)
    with torch.no_grad(), adapter.capture(["text", "tabular"]) as store:
        z = adapter.logits(batch)
        cached = {k: store[k].float().cpu() for k in ("text", "tabular")}
    cls = (z[:, 0] > 0).long()
    # ImageForward indexes cached rows by dataset index: rows 0..n-1 here
    fixed = {k: torch.zeros(len(ds), *v.shape[1:]) for k, v in cached.items()}
    for k, v in cached.items():
        fixed[k][:n] = v
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if dev.type == "cuda" and args.precision == "bf16"
        else torch.autocast("cpu", enabled=False)
    )

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def mmaudit_cached() -> torch.Tensor:
        runner = ImageForward(adapter, fixed)
        with runner.active():
            cams, _ = compute_cams(
                adapter, lambda x: runner(batch, x), batch.image, cls, {"gradcam": layer_name}, info
            )
        return upsample(cams["gradcam"], size)

    def mmaudit_full() -> torch.Tensor:
        cams, _ = compute_cams(
            adapter,
            lambda x: adapter.logits(batch.replace(image=x)),
            batch.image,
            cls,
            {"gradcam": layer_name},
            info,
        )
        return upsample(cams["gradcam"], size)

    class ImageOnly(nn.Module):
        """image -> (B, 2) logits [-z, z], the batch's report and labs fixed."""

        def __init__(self, rows: slice) -> None:
            super().__init__()
            self.model = adapter.module
            self.part = batch.select(rows)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.model(**adapter.kwargs(self.part.replace(image=x))).float()
            return torch.cat([-out, out], dim=1)

    def package_gradcam() -> np.ndarray:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        with GradCAM(model=ImageOnly(slice(0, n)), target_layers=[layer]) as cam:
            targets = [ClassifierOutputTarget(int(c)) for c in cls]
            return cam(input_tensor=batch.image, targets=targets)

    def captum_loop() -> torch.Tensor:
        from captum.attr import LayerAttribution, LayerGradCam

        maps = []
        for i in range(n):
            gc = LayerGradCam(ImageOnly(slice(i, i + 1)), layer)
            a = gc.attribute(batch.image[i : i + 1], target=int(cls[i]), relu_attributions=True)
            maps.append(LayerAttribution.interpolate(a, size, interpolate_mode="bilinear"))
        return torch.cat(maps)

    def captum_batched() -> torch.Tensor:
        from captum.attr import LayerAttribution, LayerGradCam

        gc = LayerGradCam(ImageOnly(slice(0, n)), layer)
        a = gc.attribute(batch.image, target=cls, relu_attributions=True)
        return LayerAttribution.interpolate(a, size, interpolate_mode="bilinear")

    contenders: dict[str, Callable[[], object]] = {
        "mmaudit": mmaudit_cached,
        "mmaudit (no encoder cache)": mmaudit_full,
        "pytorch-grad-cam": package_gradcam,
        "captum LayerGradCam, per sample": captum_loop,
        "captum LayerGradCam, batched": captum_batched,
    }
    # interleaved rounds, so a load change on a shared machine hits every contender alike;
    # two warm-up calls each first (oneDNN / cuDNN pick their kernels on the first calls)
    times: dict[str, list[float]] = {k: [] for k in contenders}
    with autocast:
        for fn in contenders.values():
            fn()
            fn()
        sync()
        for _ in range(args.repeats):
            for key, fn in contenders.items():
                t = time.perf_counter()
                fn()
                sync()
                times[key].append(time.perf_counter() - t)
    rows = [(k, n / statistics.median(v)) for k, v in times.items()]
    rate = dict(rows)
    peers = ("pytorch-grad-cam", "captum LayerGradCam, per sample")
    fastest = max(peers, key=lambda k: rate[k])
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(
        f"Grad-CAM maps/s, batch {n}, {name} ({torch.get_num_threads()} threads),"
        f" {args.precision}, layer {layer_name}"
    )
    for key, value in rows:
        print(f"  {key:34s} {value:9.1f} maps/s")
    print(f"  mmaudit / fastest named peer ({fastest}): {rate['mmaudit'] / rate[fastest]:.2f}x")
    print(
        f"  mmaudit / captum batched: {rate['mmaudit'] / rate['captum LayerGradCam, batched']:.2f}x"
    )
    print(
        "  mmaudit (no encoder cache) / fastest named peer:"
        f" {rate['mmaudit (no encoder cache)'] / rate[fastest]:.2f}x"
    )


if __name__ == "__main__":
    main()
