"""Faithfulness of the maps: deletion / insertion AUCs (Petsiuk et al. 2018) on a seeded
subset, each method's pixel order against a random order."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from mmaudit.checks.contract import CheckOutput
from mmaudit.checks.saliency.maps import Maps, memory_budget
from mmaudit.checks.saliency.occlusion import forward_in_chunks
from mmaudit.checks.saliency.setting import Setting
from mmaudit.methods.image_attribution import gaussian_blur
from mmaudit.methods.image_forward import ImageForward

if TYPE_CHECKING:
    from mmaudit.engine.data import Batch


def faithfulness(s: Setting, main: Maps) -> CheckOutput:
    """Deletion / insertion AUC (Petsiuk et al. 2018) on a subset, against a random order."""
    p, out = s.params, CheckOutput()
    if p.faithfulness_samples <= 0:
        return out
    have = [m for m in s.methods if m in main.thumbs]
    pool = s.ig_rows if "ig" in have and s.ig_rows is not None else s.rows
    rows = s.subset(p.faithfulness_samples, "saliency.faith", pool)
    pos = np.searchsorted(main.rows, rows)
    orders: dict[str, np.ndarray] = {}
    side = p.map_size
    rng = s.ctx.rng("saliency.faith.order")
    for m in have:
        t = main.thumbs[m][pos]
        if not np.isfinite(t).all():
            continue
        orders[m] = np.argsort(-t.reshape(len(rows), -1), axis=1, kind="stable")
    if not orders:
        return out
    orders["random"] = np.stack([rng.permutation(side * side) for _ in range(len(rows))])
    names = list(orders)
    fracs = np.linspace(0.0, 1.0, p.faithfulness_steps + 1)
    order_t = {k: torch.from_numpy(v) for k, v in orders.items()}
    runner = ImageForward(s.adapter, s.fixed)
    cls_all = torch.from_numpy(s.cls_all)
    where = {int(r): i for i, r in enumerate(rows)}
    h, w = s.size

    budget = memory_budget(s)
    # the variants in score order: the image, its blur, then per order and inner fraction a
    # deletion (top pixels blurred) and an insertion (only the top pixels kept)
    jobs = [("image", 0.0, ""), ("blurred", 0.0, "")]
    jobs += [(k, f, how) for k in names for f in fracs[1:-1] for how in ("deletion", "insertion")]

    def fn(batch: Batch) -> np.ndarray:
        """Scores of every variant of ``batch``: as many variants made at once as fit half the
        memory budget, their forwards in chunks that fit the other half."""
        assert batch.image is not None
        images = batch.image
        b = len(batch)
        dev = images.device
        blurred = gaussian_blur(images, p.blur_sigma)
        sel = torch.tensor([where[int(i)] for i in batch.index.cpu()])
        ranks = {}
        for k in names:
            o = order_t[k][sel]
            rank = torch.empty_like(o)
            rank.scatter_(1, o, torch.arange(side * side).expand(b, -1).contiguous())
            ranks[k] = torch.nn.functional.interpolate(
                rank.view(b, 1, side, side).float(), size=(h, w), mode="nearest"
            ).to(dev)

        def variant(k: str, f: float, how: str) -> torch.Tensor:
            if k in ("image", "blurred"):
                return images if k == "image" else blurred
            top = ranks[k] < round(f * side * side)
            return (
                torch.where(top, blurred, images)
                if how == "deletion"
                else torch.where(top, images, blurred)
            )

        cls = cls_all[batch.index.cpu()].to(dev)
        per_image = images[0].numel() * images.element_size()
        # each variant is held twice at once: in the list and in the stacked copy
        group = max(1, budget.rows_held("deletion / insertion variants", 2 * per_image, 0.5) // b)
        scores = []
        with torch.no_grad():
            for lo in range(0, len(jobs), group):
                part = torch.cat([variant(*job) for job in jobs[lo : lo + group]])
                k = part.shape[0] // b
                z = forward_in_chunks(runner, batch, part, budget, "deletion / insertion").float()
                scores.append(_prob(z, cls.repeat(k), s.column, s.kind).view(k, b))
        return torch.cat(scores).cpu().numpy()  # (variants, b)

    with runner.active():
        parts = s.ctx.cache.map_batches(fn, desc="deletion / insertion", indices=rows)
    sc = np.concatenate(parts, axis=1)  # (V, n)
    full, empty = sc[0], sc[1]
    n_mid = len(fracs) - 2
    table = []
    aucs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for j, k in enumerate(names):
        mid = sc[2 + j * 2 * n_mid : 2 + (j + 1) * 2 * n_mid]
        dele = np.vstack([full, mid[0::2], empty])
        ins = np.vstack([empty, mid[1::2], full])
        d_auc = np.trapezoid(dele, fracs, axis=0)
        i_auc = np.trapezoid(ins, fracs, axis=0)
        out.metrics[f"deletion_auc.{k}"] = s.boot(d_auc, rows)
        out.metrics[f"insertion_auc.{k}"] = s.boot(i_auc, rows)
        table.append({"method": k, "deletion_auc": d_auc.mean(), "insertion_auc": i_auc.mean()})
        aucs[k] = (d_auc, i_auc)
    rd, ri = aucs["random"]
    for k in names:
        if k == "random":
            continue
        d, i = aucs[k]
        out.metrics[f"deletion_gain.{k}"] = s.paired(d, rd, rows)
        out.metrics[f"insertion_gain.{k}"] = s.paired(ri, i, rows)
    out.tables["faithfulness"] = pd.DataFrame(table)
    out.metrics["faithfulness.n"] = len(rows)
    return out


def _prob(z: torch.Tensor, cls: torch.Tensor, column: int, kind: str) -> torch.Tensor:
    """Probability of the explained class."""
    if z.shape[1] == 1 or kind != "multiclass":
        sc = z[:, column]
        return torch.sigmoid(torch.where(cls == 1, sc, -sc))
    return torch.softmax(z, 1).gather(1, cls[:, None].long())[:, 0]
