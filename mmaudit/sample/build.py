"""Build ``sample_data/``: the synthetic studies, a tokenizer and two trained checkpoints.

``python -m mmaudit.sample sample_data`` regenerates everything on a CPU:
``shortcut`` is trained on every train row (the corner marker of site B predicts the
label), ``clean`` on the ``balanced_train`` rows (the marker is independent of the
label). The planted truth is documented in ``sample_data/README.md``.

Cost: about a minute on 2 CPU cores (65 s wall, training 27 s + 28 s). The committed
checkpoints' ``build_summary.json`` records 1119 s and 305 s, measured on a heavily
loaded machine. The tokenizer and the checkpoints are one
unit: the tokenizer's vocabulary fixes the text encoder's embedding table, so they
are always rebuilt together (``make sample``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmaudit.engine.config import DataConfig, RuntimeConfig
from mmaudit.engine.data import AuditDataset, Batch

LAB_COLUMNS = ["wbc", "crp", "temp", "spo2", "lactate"]
IMAGE_SIZE = 64
MAX_TOKENS = 40


def sample_data_config(
    folder: Path, split: list[str], tabular_stats: dict[str, tuple[float, float]] | None = None
) -> DataConfig:
    """The data section for the sample (the same that configs/sample.yaml spells out)."""
    tab: dict[str, object] = {"columns": LAB_COLUMNS}
    if tabular_stats is not None:
        tab = {
            "columns": LAB_COLUMNS,
            "normalization": "given",
            "mean": {k: v[0] for k, v in tabular_stats.items()},
            "std": {k: v[1] for k, v in tabular_stats.items()},
        }
    return DataConfig.model_validate(
        {
            "manifest": folder / "manifest.csv",
            "id": "id",
            "patient": "patient_id",
            "target": {"column": "label"},
            "image": {
                "column": "image_path",
                "roi_mask": "mask_path",
                "size": IMAGE_SIZE,
                "channels": 1,
                "mean": [0.5],
                "std": [0.25],
            },
            "text": {
                "column": "report",
                "tokenizer": folder / "tokenizer",
                "max_length": MAX_TOKENS,
            },
            "tabular": tab,
            "attributes": {
                "site": {},
                "sex": {},
                "age": {"kind": "continuous", "bins": [40, 60, 75]},
            },
            "split": {"column": "split", "values": split},
        }
    )


def _all_batches(ds: AuditDataset, rows: np.ndarray) -> Batch:
    items = [ds[int(i)] for i in rows]
    return ds.collate(items)


def sample_architecture(vocab_size: int) -> Any:
    """The built-in architecture of the sample checkpoints: tiny ResNet + 2-layer BERT + lab MLP,
    concat fusion, learned missing-modality tokens."""
    from mmaudit.engine.models import ArchitectureSpec, tiny_image_spec, tiny_text_spec

    spec = ArchitectureSpec(
        modalities=["image", "text", "tabular"],
        image=tiny_image_spec(IMAGE_SIZE),
        text=tiny_text_spec(vocab_size),
        tabular={"n_features": len(LAB_COLUMNS), "hidden": [32]},
        dim=32,
        fusion="concat",
        num_outputs=1,
        missing_tokens=True,
        dropout=0.1,
    )
    spec.text.max_length = MAX_TOKENS  # type: ignore[union-attr]
    return spec


def prepare_data(
    folder: Path, n: int, seed: int, **generator_kwargs: Any
) -> dict[str, tuple[float, float]]:
    """Generate studies and the tokenizer into ``folder``; return the train split's lab
    statistics (mean, std), which the audit config gives as ``normalization: given``."""
    from mmaudit.sample.generate import generate_sample, train_tokenizer

    frame = generate_sample(folder, n=n, seed=seed, **generator_kwargs)
    texts = [str(t) for t in frame.loc[frame["split"] == "train", "report"].dropna()]
    train_tokenizer(texts, folder / "tokenizer")
    train = frame[frame["split"] == "train"]
    stats = {}
    for c in LAB_COLUMNS:
        values = train[c].dropna().to_numpy(np.float32)  # float32, as the dataset computes
        stats[c] = (round(float(values.mean()), 4), round(float(values.std()), 4))
    return stats


def random_shift(images: torch.Tensor, max_shift: int, rng: np.random.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` px (edge-replicated, never wrapped around, so a
    corner marker stays in its corner): without it a small CNN trained on ~300 rows barely
    learns the opacity."""
    if max_shift <= 0:
        return images
    pad = torch.nn.functional.pad(images, (max_shift,) * 4, mode="replicate")
    h, w = images.shape[-2:]
    offsets = rng.integers(0, 2 * max_shift + 1, size=(len(images), 2))
    return torch.stack([pad[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])


def train_checkpoint(
    ds: AuditDataset,
    rows: np.ndarray,
    out: Path,
    *,
    seed: int,
    steps: int = 600,
    batch_size: int = 32,
    max_shift: int = 3,
    modality_dropout: float = 0.15,
) -> dict[str, float]:
    """Train a built-in image + text + labs model on ``rows`` of ``ds`` and save it to ``out``."""
    from mmaudit.engine.models import build_model, save_checkpoint

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    spec = sample_architecture(len(ds.tokenizer))
    model = build_model(spec)
    data = _all_batches(ds, rows)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    # the same number of optimiser steps for any number of rows, so `clean` (fewer rows) is
    # trained as long as `shortcut`
    per_epoch = (len(rows) + batch_size - 1) // batch_size
    epochs = max(1, round(steps / per_epoch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * per_epoch)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(rows)))
        for k in range(0, len(rows), batch_size):
            b = data.select(order[k : k + batch_size])
            present = b.present.clone()
            drop = torch.from_numpy(rng.random(tuple(present.shape)) < modality_dropout)
            drop[drop.all(1)] = False
            present &= ~drop
            image = random_shift(b.image, max_shift, rng) + 0.05 * torch.randn_like(b.image)  # type: ignore[arg-type]
            logits = model(
                image=image,
                input_ids=b.input_ids,
                attention_mask=b.attention_mask,
                tabular=b.tabular,
                present=present,
            )
            loss = loss_fn(logits[:, 0], b.target.float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    save_checkpoint(model, spec, out)
    return {"train_seconds": time.perf_counter() - start, "final_loss": float(loss.detach())}


def build_sample(folder: Path, n: int = 1000, seed: int = 0, steps: int = 600) -> dict[str, object]:
    """Generate data, tokenizer and both checkpoints into ``folder``; return a summary."""
    folder = Path(folder)
    stats = prepare_data(folder, n, seed)
    ds = AuditDataset(sample_data_config(folder, ["train"], stats), RuntimeConfig(seed=seed))
    balanced = ds.frame["balanced_train"].to_numpy().astype(bool)
    summary: dict[str, object] = {"tabular_stats": stats, "n": n}
    for name, rows in (("shortcut", np.arange(len(ds))), ("clean", np.flatnonzero(balanced))):
        summary[name] = train_checkpoint(
            ds, rows, folder / "checkpoints" / name, seed=seed, steps=steps
        )
        summary[name]["train_rows"] = len(rows)  # type: ignore[index]
    (folder / "build_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
