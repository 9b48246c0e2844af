"""The saliency overlays name each study, share one colour scale and draw the tested boxes
and their controls; the grid scan's effect map outlines what it found."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmaudit.checks.saliency.figures import OverlayMarks, _overlay_grid
from mmaudit.checks.saliency.maps import Maps


def test_overlays_carry_ids_colour_bar_and_tested_boxes() -> None:
    from matplotlib.patches import Rectangle

    rng = np.random.default_rng(0)
    n, side = 3, 16
    thumbs = rng.random((n, side, side)) * 0.01  # sums, not maxima: scaled for display
    maps = Maps(
        rows=np.arange(n),
        thumbs={"ig": thumbs, "gradcam": thumbs},
        images=rng.random((n, side, side)),
    )
    marks = OverlayMarks(
        ["s007", "s042", "s099"], {"ig": (0, 16, 0, 16), "ig_2": (32, 48, 0, 16)}, (64, 64)
    )
    fig = _overlay_grid(maps, ["ig", "gradcam"], np.array([2, 0]), "t", {}, marks)
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert [ax.get_title() for ax in axes[:2]] == ["s099", "s007"]  # picked rows, in order
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)
    boxes = [[p for p in ax.patches if isinstance(p, Rectangle)] for ax in axes]
    assert [len(b) for b in boxes] == [2, 2, 0, 0]  # ig's two candidates; gradcam has none
    assert boxes[0][0].get_width() == 4 and boxes[0][1].get_xy() == (-0.5, 7.5)  # 64 -> 16 px
    shown = axes[0].images[1].get_array()
    assert np.isclose(float(np.max(shown)), 1.0)  # the map at its own maximum, colour bar 0..1


def test_overlays_draw_each_candidates_control_box_dashed() -> None:
    from matplotlib.patches import Rectangle

    rng = np.random.default_rng(0)
    n, side = 2, 16
    maps = Maps(
        rows=np.arange(n),
        thumbs={"ig": rng.random((n, side, side))},
        images=rng.random((n, side, side)),
    )
    marks = OverlayMarks(
        ["a", "b"], {"ig": (0, 16, 0, 16)}, (64, 64), controls={1: {"ig": (40, 56, 24, 40)}}
    )
    fig = _overlay_grid(maps, ["ig"], np.array([0, 1]), "t", {}, marks)
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    boxes = [[p for p in ax.patches if isinstance(p, Rectangle)] for ax in axes]
    assert [len(b) for b in boxes] == [1, 2]  # row 0 has no control recorded
    control = boxes[1][1]
    assert control.get_linestyle() == "--" and control.get_xy() == (5.5, 9.5)  # 64 -> 16 px
    assert "their controls" in fig._suptitle.get_text()


def test_scan_effect_map_outlines_the_significant_boxes() -> None:
    import pandas as pd
    from matplotlib.patches import Rectangle

    from mmaudit.checks.saliency.figures import _scan_effect_map, scan_effect
    from mmaudit.checks.saliency.scan import Scan

    scan = Scan(
        boxes=[(0, 10, 0, 10), (5, 15, 5, 15), (50, 60, 50, 60)],
        excess=np.array([0.4, 0.1, -0.02]),
        p_holm=np.array([1e-6, 0.3, 1.0]),
        significant=np.array([True, False, False]),
        winner=0,
        pointed_by=[],
        table=pd.DataFrame(),
    )
    effect = scan_effect(scan, (64, 64))
    assert effect[0, 0] == 0.4 and effect[12, 12] == 0.1 and effect[7, 7] == 0.4  # the max
    assert effect[55, 55] == -0.02 and np.isnan(effect[30, 30])
    maps = Maps(rows=np.arange(2), images=np.zeros((2, 16, 16)))
    fig = _scan_effect_map(scan, np.ones((16, 16)), "ig", maps, (64, 64), {})
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 2  # the effect map beside the mean map
    for ax in panels:
        rects = [p for p in ax.patches if isinstance(p, Rectangle)]
        assert len(rects) == 1 and rects[0].get_edgecolor()[:3] == (1.0, 0.0, 0.0)
        assert rects[0].get_xy() == (0, 0) and rects[0].get_width() == 10


def test_control_boxes_are_the_ones_the_occlusion_test_filled(tmp_path: Path) -> None:
    """Fill each reproduced control box and run the model: the change of the explained
    score must equal the occlusion test's own ``delta_control`` for that image."""
    import torch
    from test_saliency_corners import PARAMS, context, write_films

    from mmaudit.checks.registry import load_builtin_checks
    from mmaudit.checks.saliency.control_boxes import control_boxes
    from mmaudit.checks.saliency.hotspot import find_hotspots
    from mmaudit.checks.saliency.maps import compute_maps
    from mmaudit.checks.saliency.occlusion import occlusion_test
    from mmaudit.checks.saliency.setting import image_rows, prepare, signed_score
    from mmaudit.engine.distributed import sample_seeds
    from mmaudit.methods.region_fill import linear_fill

    torch.set_num_threads(1)
    manifest = write_films(tmp_path, "top_left")
    ctx = context(manifest, "top_left", "used")
    with torch.no_grad():  # every pixel now moves the logit a little: a control's place shows
        g = torch.Generator().manual_seed(0)
        ctx.adapter.module.lung.add_(torch.randn(ctx.adapter.module.lung.shape, generator=g) * 1e-3)
    cls = load_builtin_checks()["saliency"]
    p = cls.Params.model_validate(PARAMS)
    s, _ = prepare(ctx, p, image_rows(ctx), dict(cls.default_thresholds))
    main = compute_maps(s)
    trusted = {m: True for m in s.methods}
    hot, _ = find_hotspots(s, main, trusted)
    occ, _ = occlusion_test(s, main, hot, trusted)
    assert occ is not None and hot.candidates
    rows = main.rows[:6]
    found = control_boxes(s, hot, rows)
    assert set(found) == {int(r) for r in rows}
    name = hot.candidates[0][0]
    batch = s.ds.collate([s.ds[int(r)] for r in rows])
    bh, bw = hot.box_size
    for i, row in enumerate(rows):
        cr0, cr1, cc0, cc1 = found[int(row)][name]
        assert cr1 - cr0 == bh and cc1 - cc0 == bw
        img = batch.image[i : i + 1]
        # the occlusion test's fill seeds: corner list index k + draw; find the draw by fill
        k = len(hot.candidates)
        deltas = []
        for d in range(p.control_draws):
            seed = int(s.ctx.rng("saliency.infill").integers(2**31))
            filled = linear_fill(
                img,
                torch.tensor([cr0]),
                torch.tensor([cc0]),
                bh,
                bw,
                p.infill_noise,
                seeds=sample_seeds(seed, f"saliency.infill.{k + d}", [int(row)]),
            )
            with torch.no_grad():
                z = ctx.adapter.module(filled).numpy()
            cls_i = s.cls_all[[int(row)]]
            base = signed_score(s.logits[[int(row)]], cls_i, s.column, s.kind)
            deltas.append(float(signed_score(z, cls_i, s.column, s.kind)[0] - base[0]))
        want = float(occ.per_sample[f"delta_control.{name}"].to_numpy()[i])
        assert want != 0 and min(abs(d - want) for d in deltas) < 1e-5
