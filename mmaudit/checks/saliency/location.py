"""Where the attribution lies, per method over every image row: the share outside the ROI
against its chance level (the outside area) and against the randomised model, pointing game
and relevance-rank accuracy, the share in the image border band (usable without masks), and
the concentration in the top pixels."""

from __future__ import annotations

import numpy as np

from mmaudit.checks.contract import CheckOutput
from mmaudit.checks.saliency.maps import Maps
from mmaudit.checks.saliency.metrics import holm_adjusted
from mmaudit.checks.saliency.sanity import SanityResult
from mmaudit.checks.saliency.setting import Setting


def location_metrics(s: Setting, main: Maps, sanity: SanityResult) -> CheckOutput:
    """``off_roi*``, ``pointing``, ``rank_acc``, ``border*`` and ``concentration`` per
    method; the excess over chance Holm-adjusted as one family (untrusted methods lose
    their p-values)."""
    out = CheckOutput()
    rows = main.rows
    random = sanity.random
    excess_keys: list[str] = []
    chance_done = False
    for m in s.methods:
        st = main.stats[m]
        if "off_roi" in st:
            if not chance_done:
                out.metrics["off_roi_chance"] = s.boot(st["off_roi_chance"], rows)
            out.metrics[f"off_roi.{m}"] = s.boot(st["off_roi"], rows)
            out.metrics[f"off_roi_excess.{m}"] = s.paired(st["off_roi_chance"], st["off_roi"], rows)
            excess_keys.append(f"off_roi_excess.{m}")
            out.metrics[f"pointing.{m}"] = s.boot(st["pointing"], rows)
            out.metrics[f"rank_acc.{m}"] = s.boot(st["rank_acc"], rows)
            if random is not None and m in random.stats:
                rr = random.rows
                pos = np.searchsorted(rows, rr)
                r = random.stats[m]["off_roi"]
                out.metrics[f"off_roi_random.{m}"] = s.boot(r, rr)
                out.metrics[f"off_roi_vs_random.{m}"] = s.paired(r, st["off_roi"][pos], rr)
        if not chance_done:
            out.metrics["border_chance"] = float(np.nanmean(st["border_chance"]))
            chance_done = True
        out.metrics[f"border.{m}"] = s.boot(st["border"], rows)
        out.metrics[f"border_excess.{m}"] = s.paired(st["border_chance"], st["border"], rows)
        excess_keys.append(f"border_excess.{m}")
        if random is not None and m in random.stats:
            rr = random.rows
            out.metrics[f"border_random.{m}"] = s.boot(random.stats[m]["border"], rr)
        out.metrics[f"concentration.{m}"] = s.boot(st["top"], rows)
    if not s.has_masks:
        out.notes.append(
            "no ROI masks (data.image.roi_mask): off-ROI statistics are not computed; the"
            " border-band share stands in for them"
        )
    out.metrics.update(holm_adjusted(out.metrics, excess_keys, sanity.trusted))
    return out
