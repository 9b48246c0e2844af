"""Build one family-2 run: generate its studies, train its model class, write its audit YAML.

The YAML loads the checkpoint the way a user's own model is loaded (``model.factory``,
``model.weights``, ``model.layers``; docs/own-model.md), so the audit goes through the
bring-your-own path, not the built-in checkpoint format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "prepare_family2",
    "generate_interaction_renders",
    "generate_without_cue",
    "train_and_configure",
]

_REPO = Path(__file__).resolve().parents[2]


def prepare_family2(variant: Any, seed: int, folder: Path, n: int) -> dict[str, Any]:
    """Generate the studies (and, for the CNN, a word-piece tokenizer); return the train
    split's lab statistics and the tokenizer folder."""
    from benchmarks.detection.family2_data import LAB_COLUMNS, generate_family2
    from benchmarks.detection.family2_models import MODELS, minilm_folder

    frame = generate_family2(folder, n, seed, **variant.generator_kwargs(seed))
    if MODELS[variant.model]["minilm"]:
        tokenizer = minilm_folder()
    else:
        from mmaudit.sample.generate import train_tokenizer

        texts = [str(t) for t in frame.loc[frame["split"] == "train", "report"]]
        train_tokenizer(texts, folder / "tokenizer")
        tokenizer = folder / "tokenizer"
    train = frame[frame["split"] == "train"]
    stats = {
        c: (round(float(train[c].mean()), 4), round(float(train[c].std(ddof=0)), 4))
        for c in LAB_COLUMNS
    }
    return {"stats": stats, "tokenizer": str(tokenizer)}


def generate_without_cue(variant: Any, seed: int, folder: Path, n: int) -> None:
    """The same studies with the variant's cue switched off (``variant.cue_off``)."""
    from benchmarks.detection.family2_data import generate_family2

    generate_family2(folder, n, seed, **{**variant.generator_kwargs(seed), **variant.cue_off})


def generate_interaction_renders(variant: Any, seed: int, run_dir: Path, n: int) -> dict[str, Path]:
    """The same studies with state A and / or B removed or flipped
    (``interaction.RENDERS``); returns render name -> folder."""
    from benchmarks.detection.family2_data import generate_family2
    from benchmarks.detection.interaction import RENDERS

    folders = {}
    for name, (report_state, lab_state) in RENDERS.items():
        folders[name] = run_dir / f"data_{name}"
        kw = {**variant.generator_kwargs(seed), "report_state": report_state}
        generate_family2(folders[name], n, seed, **kw, lab_state=lab_state)
    return folders


def train_and_configure(
    variant: Any, folder: Path, prep: dict[str, Any], ckpt: Path, seed: int, steps: int, bs: int
) -> tuple[Path, dict[str, Any]]:
    """Train the variant's model class on the train split; write the audit YAML for the test
    split. Returns (config path, training summary)."""
    import yaml

    from benchmarks.detection.family2_data import LAB_COLUMNS, family2_data_config
    from benchmarks.detection.family2_models import MODELS, train_family2
    from mmaudit.engine.config import RuntimeConfig
    from mmaudit.engine.data import AuditDataset

    info = MODELS[variant.model]
    tokenizer = Path(prep["tokenizer"])
    ds = AuditDataset(
        family2_data_config(folder, ["train"], prep["stats"], tokenizer), RuntimeConfig(seed=seed)
    )
    kwargs: dict[str, Any] = {"n_labs": len(LAB_COLUMNS)}
    if not info["minilm"]:
        kwargs["vocab_size"] = len(ds.tokenizer)
    from importlib import import_module

    mod, _, fn = info["factory"].partition(":")
    import torch

    torch.manual_seed(seed)
    model = getattr(import_module(mod), fn)(**kwargs)
    weights = ckpt / "weights.pt"
    summary = train_family2(model, ds, np.arange(len(ds)), weights, seed=seed, steps=steps)
    data = family2_data_config(folder, ["test"], prep["stats"], tokenizer).model_dump(mode="json")
    cfg = {
        "model": {
            "factory": info["factory"],
            "kwargs": kwargs,
            "weights": str(weights),
            "python_path": [str(_REPO)],
            "layers": info["layers"],
            "inputs": {
                "image": "image",
                "text": "text",
                "text_mask": "text_mask",
                "tabular": "tabular",
            },
        },
        "data": data,
        "checks": {},
        "runtime": {"device": "cpu", "batch_size": bs, "seed": seed, "progress": False},
    }
    path = ckpt.parent / f"audit_{ckpt.name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, summary
