"""InferenceCache: one sweep, memoised ablations, encoder-output reuse equal to input-level runs;
a persisted base sweep is memory-mapped from the work folder and resumes chunk by chunk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import byo_model_config, tiny_config

from mmaudit.engine.cache import InferenceCache
from mmaudit.engine.sweep_outputs import SweepResult

LAYERS = ("embedding", "image", "tabular")


@pytest.fixture()
def make_cache(tiny_manifest: Path, tiny_weights: Path, write_config):  # type: ignore[no-untyped-def]
    """A fresh cache over the tiny dataset (new model, nothing memoised) at a batch size."""
    from mmaudit.engine.config_file import load_config
    from mmaudit.engine.data import build_dataset
    from mmaudit.engine.loading import load_model

    path = write_config(tiny_config(tiny_manifest, byo_model_config(tiny_weights / "tiny.pt")))
    cfg = load_config(path)
    ds = build_dataset(cfg)

    def make(
        batch_size: int = 16,
        work_dir: Path | None = None,
        layers: tuple[str, ...] = LAYERS,
        num_workers: int = 0,
        memory_budget_mb: float | None = 1024.0,
    ) -> InferenceCache:
        adapter = load_model(cfg.model, ds.modalities, cfg.runtime)
        c = InferenceCache(
            adapter,
            ds,
            batch_size=batch_size,
            seed=0,
            num_workers=num_workers,
            memory_budget_mb=memory_budget_mb,
        )
        c.request_layers(list(layers))
        c.work_dir = work_dir
        return c

    return make


@pytest.fixture()
def cache(make_cache) -> InferenceCache:  # type: ignore[no-untyped-def]
    return make_cache()


def test_encoder_level_permute_equals_input_level_permute(cache: InferenceCache) -> None:
    for m in ("image", "tabular"):
        at_input = cache.ablated({m: "permute"}, level="input").logits
        at_encoder = cache.ablated({m: "permute"}, level="encoder").logits
        assert np.allclose(at_input, at_encoder, atol=1e-5)
        assert not np.allclose(at_input, cache.sweep().logits)


def test_ablations_are_memoised(cache: InferenceCache) -> None:
    cache.sweep()
    calls = cache.model_calls
    cache.ablated({"tabular": "zero"})
    assert cache.model_calls == calls + 3
    cache.ablated({"tabular": "zero"})
    assert cache.model_calls == calls + 3
    assert cache.ablated({}).logits is cache.sweep().logits


def test_zero_tabular_at_input_equals_zero_at_encoder_input(cache: InferenceCache) -> None:
    """Standardised labs set to 0 are the dataset mean; the encoder output of that is constant."""
    out = cache.ablated({"tabular": "zero"}, level="input").logits
    emb = cache.embeddings("tabular")
    assert emb.shape == (48, 4)
    tab = cache.adapter.module.tab
    const = tab.bias.detach().numpy()
    values = {**{m: cache.embeddings(m) for m in ("image",)}, "tabular": np.tile(const, (48, 1))}
    import torch

    with torch.no_grad():
        fused = torch.relu(
            cache.adapter.module.fuse(
                torch.cat(
                    [torch.from_numpy(values["image"]), torch.from_numpy(values["tabular"])], 1
                )
            )
        )
        expected = cache.adapter.module.out(fused).numpy()
    assert np.allclose(out, expected, atol=1e-5)


def test_logits_with_cached_embedding_equal_base(cache: InferenceCache) -> None:
    base = cache.sweep().logits
    again = cache.logits_with_layer("embedding", cache.embeddings("embedding"), key="identity")
    assert np.allclose(base, again, atol=1e-6)
    zero = cache.logits_with_layer("embedding", np.zeros_like(cache.embeddings("embedding")))
    assert np.allclose(zero, cache.adapter.module.out.bias.detach().numpy(), atol=1e-6)
    assert cache.adapter.hook_count() == 0


def test_logits_with_layer_decodes_no_image(
    cache: InferenceCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image encoder is substituted, so reading the images again would be wasted work."""
    base, fused = cache.sweep().logits, cache.embeddings("embedding")

    def decode(self: object, index: int) -> None:
        raise AssertionError(f"row {index} decoded")

    monkeypatch.setattr(type(cache.dataset), "__getitem__", decode)
    assert np.allclose(cache.logits_with_layer("embedding", fused), base, atol=1e-6)


def test_map_batches_runs_with_grad_in_order(cache: InferenceCache) -> None:
    import torch

    def grad_norm(batch):  # type: ignore[no-untyped-def]
        image = batch.image.clone().requires_grad_(True)
        logits = cache.adapter.logits(batch.replace(image=image))
        (grad,) = torch.autograd.grad(logits.sum(), image)
        return batch.index.numpy(), grad.flatten(1).norm(dim=1).numpy()

    out = cache.map_batches(grad_norm, grad=True)
    order = np.concatenate([o[0] for o in out])
    assert order.tolist() == list(range(48))
    assert np.all(np.concatenate([o[1] for o in out]) > 0)


# ------------------------------------------------------------ sweeps kept on disk (--resume)


class Interrupted(Exception):
    """Stands in for a crash or Ctrl-C part-way through a sweep."""


#: forwards of 1 and 2 rows that measure a sweep's memory per row before its first batch
PROBE_CALLS = 2


def _interrupt_after(cache: InferenceCache, calls: int, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Make the model raise on its batch number ``calls + 1`` (after the probe forwards)."""
    original = cache.adapter.logits
    seen = [-PROBE_CALLS]

    def logits(batch):  # type: ignore[no-untyped-def]
        if seen[0] == calls:
            raise Interrupted
        seen[0] += 1
        return original(batch)

    monkeypatch.setattr(cache.adapter, "logits", logits)


def _assert_same(a: SweepResult, b: SweepResult) -> None:
    assert np.array_equal(a.logits, b.logits)
    assert a.embeddings.keys() == b.embeddings.keys()
    for name in a.embeddings:
        assert np.array_equal(a.embeddings[name], b.embeddings[name]), name


def test_persisted_sweep_is_memory_mapped_and_equal_to_in_memory(
    make_cache, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    work = tmp_path / "work"
    work.mkdir()
    on_disk = make_cache(work_dir=work).sweep()
    in_ram = make_cache().sweep()
    assert not isinstance(in_ram.logits, np.memmap)
    for array in (on_disk.logits, *on_disk.embeddings.values()):
        assert isinstance(array, np.memmap)
        assert Path(array.filename).parent == work  # type: ignore[arg-type]
        assert not array.flags.writeable
    assert on_disk.logits.shape == (48, 1) and on_disk.embeddings["embedding"].shape == (48, 8)
    _assert_same(on_disk, in_ram)
    # one .npy per output plus the done flags of the 3 chunks, all set
    (done,) = work.glob("base.*.done.npy")
    assert np.load(done).tolist() == [1, 1, 1]
    assert len(list(work.glob("base.*.npy"))) == 1 + 1 + len(LAYERS)


def test_checks_read_memory_mapped_sweeps(make_cache, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Encoder-level ablation and layer substitution only read the read-only maps."""
    on_disk, in_ram = make_cache(work_dir=tmp_path), make_cache()
    for c in (on_disk, in_ram):
        c.sweep()
    for level in ("input", "encoder"):
        a = on_disk.ablated({"image": "permute", "tabular": "mean"}, level=level).logits  # type: ignore[arg-type]
        b = in_ram.ablated({"image": "permute", "tabular": "mean"}, level=level).logits  # type: ignore[arg-type]
        assert np.array_equal(a, b)
    emb = on_disk.embeddings("embedding")
    assert np.array_equal(on_disk.logits_with_layer("embedding", emb), in_ram.sweep().logits)


def test_interrupted_sweep_resumes_only_unfinished_chunks(
    make_cache, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    first = make_cache(batch_size=5, work_dir=tmp_path)
    _interrupt_after(first, 4, monkeypatch)
    with pytest.raises(Interrupted):
        first.sweep()
    (done,) = tmp_path.glob("base.*.done.npy")
    assert np.load(done).tolist() == [1] * 4 + [0] * 6  # 48 rows in chunks of 5
    resumed = make_cache(batch_size=5, work_dir=tmp_path)
    result = resumed.sweep()
    assert resumed.model_calls == 6
    _assert_same(result, make_cache(batch_size=5).sweep())
    again = make_cache(batch_size=5, work_dir=tmp_path)
    _assert_same(again.sweep(), result)
    assert again.model_calls == 0


def test_other_batch_size_does_not_reuse_the_done_flags(
    make_cache, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    first = make_cache(batch_size=16, work_dir=tmp_path)
    _interrupt_after(first, 2, monkeypatch)
    with pytest.raises(Interrupted):
        first.sweep()
    # 48 rows make 3 chunks at either size: flags [1, 1, 0] of chunks of 16 would read as
    # "rows 0-39 done" in chunks of 20, though rows 32-39 were never written
    other = make_cache(batch_size=20, work_dir=tmp_path)
    result = other.sweep()
    assert other.model_calls == 3
    _assert_same(result, make_cache(batch_size=20).sweep())


def test_other_shard_is_not_reused(make_cache, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Rank 1 of 2 wrote rows 24-47; one process must not read them as its own rows."""
    from mmaudit.engine import distributed

    with monkeypatch.context() as m:
        m.setattr(distributed, "active", lambda: True)
        m.setattr(distributed, "gather", lambda obj: [obj])
        m.setenv("WORLD_SIZE", "2")
        m.setenv("RANK", "1")
        half = make_cache(batch_size=8, work_dir=tmp_path)
        assert half.sweep().logits.shape == (24, 1)
        assert half.model_calls == 3
    assert len(list(tmp_path.glob("base.rank1of2.rows24-48of48.batch8.*.npy"))) == 5
    whole = make_cache(batch_size=8, work_dir=tmp_path)
    result = whole.sweep()
    assert whole.model_calls == 6
    _assert_same(result, make_cache(batch_size=8).sweep())


def test_new_layer_or_damaged_file_means_recompute(make_cache, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_cache(work_dir=tmp_path, layers=("embedding",)).sweep()
    wider = make_cache(work_dir=tmp_path)
    result = wider.sweep()
    assert wider.model_calls == 3  # the earlier run has no image / tabular outputs
    _assert_same(result, make_cache().sweep())
    (logits,) = tmp_path.glob("base.*.logits.npy")
    logits.write_bytes(logits.read_bytes()[:100])  # cut short, as by a full disk
    damaged = make_cache(work_dir=tmp_path)
    _assert_same(damaged.sweep(), result)
    assert damaged.model_calls == 3


# ------------------------------------------------------------ the memory budget of a sweep


def _assert_close(a: SweepResult, b: SweepResult) -> None:
    """Equal up to float rounding: BLAS may sum a row's products in another order when the
    batch it sits in is smaller."""
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-6)
    assert a.embeddings.keys() == b.embeddings.keys()
    for k in a.embeddings:
        np.testing.assert_allclose(a.embeddings[k], b.embeddings[k], rtol=1e-5, atol=1e-6)


def test_a_budget_below_the_batch_splits_each_batch_and_changes_no_output(make_cache) -> None:  # type: ignore[no-untyped-def]
    whole = make_cache(batch_size=16, memory_budget_mb=None)
    expected = whole.sweep()
    assert whole.timings()["sweep.rows_per_forward"] == 16 and whole.memory_notes() == []
    ample = make_cache(batch_size=16)
    _assert_same(ample.sweep(), expected)
    plan = ample.memory.plans["sweep"]
    assert plan.rows_per_chunk >= 16  # 1 GB holds a batch of the tiny model
    assert ample.model_calls == 3  # 48 rows, 3 batches, no split
    fp = plan.footprint
    # a budget that holds the fixed cost and 5.5 rows: 5 rows per forward, 16 = 5 + 5 + 5 + 1
    tight = make_cache(
        batch_size=16, memory_budget_mb=(fp.fixed_bytes + 5.5 * fp.bytes_per_row) / 2**20
    )
    _assert_close(tight.sweep(), expected)
    assert tight.memory.plans["sweep"].rows_per_chunk == 5
    assert tight.model_calls == 3 * 4
    timings = tight.timings()
    assert timings["sweep.rows_per_forward"] == 5
    assert timings["memory_budget_mb"] == tight.memory.budget_mb
    (note,) = tight.memory_notes()
    assert "5 rows per forward" in note
    # passes that substitute the encoders (only fusion and head run) are planned apart
    emb = tight.embeddings("embedding")
    np.testing.assert_allclose(
        tight.logits_with_layer("embedding", emb), expected.logits, rtol=1e-5, atol=1e-6
    )
    assert any(name.startswith("sweep layer:") for name in tight.memory.plans)


def test_layers_on_rows_are_those_rows_of_the_sweep(make_cache) -> None:  # type: ignore[no-untyped-def]
    """A pass over a subset (the probing check's random-weights rows) gives the sweep's
    outputs on those rows, in the order asked, without memoising or persisting anything."""
    cache = make_cache(batch_size=16)
    rows = np.array([3, 4, 17, 30, 31, 32, 47])
    part = cache.layers_on_rows(["embedding", "image"], rows)
    assert cache.model_calls == 1 and "base" not in cache._sweeps
    full = cache.sweep()
    for name in ("embedding", "image"):
        np.testing.assert_allclose(part[name], full.embeddings[name][rows], rtol=1e-5, atol=1e-6)


def test_the_measured_rows_grow_as_the_budget_grows(make_cache) -> None:  # type: ignore[no-untyped-def]
    small = make_cache(batch_size=16, memory_budget_mb=0.05)
    small.sweep()
    fp = small.memory.plans["sweep"].footprint
    assert fp.bytes_per_row > 0
    rows = small.memory.plans["sweep"].rows_per_chunk
    assert rows == max(1, int((0.05 * 2**20 - fp.fixed_bytes) // fp.bytes_per_row))


def test_the_memory_record_names_only_the_passes_the_budget_split(make_cache) -> None:  # type: ignore[no-untyped-def]
    """report.json's memory plan lists a pass when its batches were split, not every pass
    measured: an ample budget is measured too, but records nothing."""
    ample = make_cache(batch_size=16)
    ample.sweep()
    assert "sweep" in ample.memory.plans and ample.memory.plans["sweep"].rows_per_chunk >= 16
    assert ample.memory_notes() == [] and ample.memory_record() == {}
    fp = ample.memory.plans["sweep"].footprint
    tight = make_cache(
        batch_size=16, memory_budget_mb=(fp.fixed_bytes + 5.5 * fp.bytes_per_row) / 2**20
    )
    tight.sweep()
    tight.logits_with_layer("embedding", tight.embeddings("embedding"))  # fusion + head only
    split = {name for name, p in tight.memory.plans.items() if p.rows_per_chunk < 16}
    # the sweep is split; the fusion-and-head pass is measured too but fits 16 rows whole
    assert "sweep" in split and "sweep layer:embedding" in set(tight.memory.plans) - split
    record = tight.memory_record()["memory_plan"]
    assert set(record["passes"]) == split
    assert record["passes"]["sweep"] == {
        "bytes_per_row": fp.bytes_per_row,
        "fixed_bytes": fp.fixed_bytes,
        "rows_per_forward": 5,
    }
    assert record["budget_mb"] == tight.memory.budget_mb
    assert record["note"] == tight.memory_notes()[0]
    assert all(name in record["note"] for name in split)
    assert make_cache(batch_size=16, memory_budget_mb=None).memory_record() == {}


# ------------------------------------------------------------ NaN / inf outputs are refused


def _poison(cache: InferenceCache, module: str, rows: list[int], value: float) -> None:
    """Make ``module``'s output ``value`` on the given dataset rows, told apart by their lab
    values (unique per row), in every sweep the cache runs."""
    import torch

    tab = cache.dataset.tabular
    assert tab is not None
    marked = tab[rows]
    seen: dict[str, torch.Tensor] = {}
    model = cache.adapter.module

    def remember(_m, _args, kwargs):  # type: ignore[no-untyped-def]
        seen["tab"] = kwargs["tabular"]

    def spoil(_m, _i, out):  # type: ignore[no-untyped-def]
        hit = (seen["tab"][:, None, :] == marked[None]).all(-1).any(1)
        return torch.where(hit[:, None], torch.full_like(out, value), out)

    model.register_forward_pre_hook(remember, with_kwargs=True)
    model.get_submodule(module).register_forward_hook(spoil)


def test_nan_logits_stop_the_sweep_naming_the_ids(make_cache, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from mmaudit.engine.errors import MmauditError, NonFiniteOutputError

    cache = make_cache(batch_size=16, work_dir=tmp_path)
    _poison(cache, "out", [20, 22], float("nan"))
    with pytest.raises(NonFiniteOutputError) as info:
        cache.sweep()
    assert isinstance(info.value, MmauditError) and info.value.exit_code == 2
    assert str(info.value) == (
        "model output 'logits' is NaN for ids s20, s22 (2 of 16 rows of a batch in the base sweep)"
    )
    assert "checkpoint" in info.value.hint and "--debug" in info.value.hint
    # the batch before it is kept for --resume, the bad one is not marked done
    (done,) = tmp_path.glob("base.*.done.npy")
    assert np.load(done).tolist() == [1, 0, 0]


def test_inf_in_a_captured_layer_is_named(make_cache) -> None:  # type: ignore[no-untyped-def]
    """-inf in the fused vector: the ReLU after it hides it from the logits, not from the
    embedding every embedding check would read."""
    from mmaudit.engine.errors import NonFiniteOutputError

    cache = make_cache()
    _poison(cache, "fuse", [40], float("-inf"))
    expected = r"^layer 'embedding' \(fuse\) is inf for id s40 \(1 of 16 rows"
    with pytest.raises(NonFiniteOutputError, match=expected):
        cache.sweep()


def test_the_first_bad_output_is_detailed_and_the_others_listed(make_cache) -> None:  # type: ignore[no-untyped-def]
    from mmaudit.engine.errors import NonFiniteOutputError

    cache = make_cache()
    _poison(cache, "tab", [1], float("inf"))
    with pytest.raises(NonFiniteOutputError) as info:
        cache.sweep()
    message = str(info.value)
    assert message.startswith("layer 'tabular' (tab) is inf for id s1 (1 of 16 rows")
    assert message.endswith("also not finite: layer 'embedding' (fuse), model output 'logits'")


def test_non_finite_ablated_and_coalition_sweeps_are_refused(make_cache) -> None:  # type: ignore[no-untyped-def]
    """NaN only when the labs are removed: the base sweep passes, the ablations stop."""
    import torch

    from mmaudit.engine.errors import NonFiniteOutputError

    cache = make_cache()
    cache.sweep()
    # input level: NaN where the lab input is all zeros
    cache.adapter.module.tab.register_forward_hook(
        lambda _m, args, out: torch.where((args[0] == 0).all(1)[:, None], torch.nan, out)
    )
    expected = (
        r"ids s0, s1, s2, s3, s4 and 11 more \(16 of 16 rows of a batch in the ablated sweep"
        r" 'input:tabular=zero'\)$"
    )
    with pytest.raises(NonFiniteOutputError, match=expected):
        cache.ablated({"tabular": "zero"}, level="input")
    # encoder level (the lab encoder's output zeroed, so the hook above never runs): NaN where
    # the fusion's lab features are all zero; the second of the two coalitions stacked in one
    # forward is the bad one, and the message names it
    cache.adapter.module.fuse.register_forward_hook(
        lambda _m, args, out: torch.where((args[0][:, 4:] == 0).all(1)[:, None], torch.nan, out)
    )
    with pytest.raises(NonFiniteOutputError, match=r"the ablated sweep 'encoder:tabular=zero'\)$"):
        cache.ablated_many([{"image": "zero"}, {"tabular": "zero"}], level="encoder")
    assert cache.ablated({"image": "zero"}, level="encoder").logits.shape == (48, 1)


def test_a_rank_meeting_nan_joins_the_gather_and_every_rank_stops(
    make_cache, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Under torchrun the failing rank must not leave the others waiting in the gather:
    it joins it with its error, and every rank raises the same one."""
    from mmaudit.engine import distributed
    from mmaudit.engine.errors import NonFiniteOutputError

    sent: list[object] = []

    def gather(obj):  # type: ignore[no-untyped-def]
        sent.append(obj)
        healthy = (np.zeros((24, 1), np.float32), {n: np.zeros((24, 8)) for n in LAYERS}, None)
        return [healthy, obj]  # this process plays rank 1

    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "gather", gather)
    sick = make_cache()
    _poison(sick, "out", [3], float("nan"))
    with pytest.raises(NonFiniteOutputError, match="for id s3 ") as info:
        sick.sweep()
    assert sent and sent[0][2] == (str(info.value), info.value.hint)  # type: ignore[index]
    # a healthy rank raises the failing rank's error after the gather
    monkeypatch.setattr(
        distributed, "gather", lambda obj: [obj, (np.zeros((0,)), {}, ("rank 1's line", "hint"))]
    )
    with pytest.raises(NonFiniteOutputError, match="rank 1's line") as info:
        make_cache().sweep()
    assert info.value.hint == "hint"


def _every_pass(cache: InferenceCache) -> dict[str, np.ndarray]:
    """The outputs of every kind of pass over the data: the sweep and its layers, input-level
    removals that decode (permuted and mean image), an encoder-level coalition, a pass with
    the image encoder running but its removal at the encoder level, and map_batches."""
    import torch

    base = cache.sweep()
    out = {"logits": base.logits, **{f"layer.{n}": v for n, v in base.embeddings.items()}}
    for m, how in (("image", "permute"), ("image", "mean"), ("tabular", "permute")):
        out[f"input.{m}.{how}"] = cache.ablated({m: how}).logits  # type: ignore[dict-item]
    out["encoder.image.permute"] = cache.ablated({"image": "permute"}, level="encoder").logits
    cache.adapter.layers.pop("image")  # now the image must be decoded for coalitions
    out["encoder.tabular.mean"] = cache.ablated({"tabular": "mean"}, level="encoder").logits

    def fn(batch):  # type: ignore[no-untyped-def]
        image = batch.image.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(cache.adapter.logits(batch.replace(image=image)).sum(), image)
        return np.concatenate([grad.flatten(1).numpy(), batch.roi_mask.flatten(1).numpy()], 1)

    out["map_batches"] = np.concatenate(cache.map_batches(fn, grad=True, batch_size=10))
    return out


def test_results_are_the_same_with_loader_workers(make_cache) -> None:  # type: ignore[no-untyped-def]
    """Decoding in worker processes changes where images are read, never what the model gets."""
    alone, workers = make_cache(), make_cache(num_workers=2)
    assert workers.num_workers == 2
    try:
        expected, got = _every_pass(alone), _every_pass(workers)
    finally:
        workers.close()
    assert expected.keys() == got.keys()
    for name in expected:
        assert np.array_equal(expected[name], got[name]), name


def test_images_are_decoded_in_the_workers_which_persist_across_passes(
    make_cache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """With workers, no image (not even a permuted image's donor) is decoded by the main
    process during a pass, and every pass is served by the same two worker processes."""
    import os

    import mmaudit.engine.data as data

    decoded = tmp_path / "decoded"
    decoded.mkdir()
    read = data.load_image_file

    def load_image_file(path: Path, *args: object) -> np.ndarray:
        (decoded / f"{os.getpid()}-{Path(path).stem}-{os.urandom(4).hex()}").touch()
        return read(path, *args)

    monkeypatch.setattr(data, "load_image_file", load_image_file)
    cache = make_cache(num_workers=2)
    try:
        _every_pass(cache)
        assert cache.loader.started == 1
    finally:
        cache.close()
    pids = {int(f.name.split("-")[0]) for f in decoded.iterdir()}
    assert os.getpid() not in pids
    assert len(pids) == 2
    # permuted-image passes decoded each row twice (as itself and as a donor), in the workers
    assert sum(1 for f in decoded.iterdir() if "-s3-" in f.name) > 4


def test_workers_see_the_stand_ins_set_after_they_started(make_cache) -> None:  # type: ignore[no-untyped-def]
    """Workers hold a copy of the dataset: a later ``configure_missing`` restarts them, or the
    lab stand-ins (the column mean, written into the dataset) would not reach the batches."""
    cache = make_cache(num_workers=2)
    try:
        cache.map_batches(lambda b: b.tabular.numpy())
        cache.dataset.configure_missing(model_takes_present=False)
        labs = np.concatenate(cache.map_batches(lambda b: b.tabular.numpy()))
        assert cache.loader.started == 2
    finally:
        cache.close()
        cache.dataset.configure_missing(model_takes_present=True)
    expected = cache.dataset._tabular_column_means.numpy()
    missing = cache.dataset.tabular_missing.numpy()
    assert missing[:, 1].any()
    assert np.allclose(labs[missing], np.broadcast_to(expected, labs.shape)[missing])


def test_each_pass_records_its_wait_for_data_and_its_model_time(make_cache) -> None:  # type: ignore[no-untyped-def]
    import time

    cache = make_cache()
    cache.sweep()
    cache.map_batches(lambda b: time.sleep(0.05))
    passes = {p["pass"]: p for p in cache.passes}
    assert passes["sweep base"]["batches"] == 3 and passes["batches"]["batches"] == 3
    assert passes["batches"]["model_s"] >= 0.15  # the check's work is the model's side
    timings = cache.timings()
    assert timings["model_s"] == pytest.approx(sum(p["model_s"] for p in cache.passes))
    assert timings["data_wait_s"] == pytest.approx(sum(p["data_wait_s"] for p in cache.passes))
    assert timings["sweep.data_wait_s"] > 0 and timings["sweep.model_s"] > 0


def test_a_pass_started_inside_another_gets_its_own_workers(make_cache) -> None:  # type: ignore[no-untyped-def]
    """The persistent loader serves one pass at a time: a pass begun while another is being
    read (here the mean image, asked for inside a check's batch function) must not reset it."""
    alone, workers = make_cache(), make_cache(num_workers=2)

    def fn(cache: InferenceCache):  # type: ignore[no-untyped-def]
        return lambda b: (b.index.numpy(), cache.input_mean("image").numpy())

    try:
        got = workers.map_batches(fn(workers), batch_size=10)
        assert workers.loader.started == 2
    finally:
        workers.close()
    expected = alone.map_batches(fn(alone), batch_size=10)
    assert np.concatenate([g[0] for g in got]).tolist() == list(range(48))
    assert np.array_equal(got[-1][1], expected[-1][1])
