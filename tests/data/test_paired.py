from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from tvt.data.folder import ClassFolder
from tvt.data.paired import PairedLoader, substep_plan
from tvt.data.transforms import tvt_train_transform
from tvt.errors import ConfigError, DataError


def _rows(plan, which):
    return [(s.start, s.stop) if s is not None else None for s in (p[which] for p in plan)]


def test_substep_plan_readme_sketchy():
    plan = substep_plan(256, 16, 2)
    assert _rows(plan, 0) == [(16 * i, 16 * i + 16) for i in range(16)]
    # a sketch sub-batch after every 2nd image sub-batch: rows [16(k-1), 16k) for k = 1..8
    assert _rows(plan, 1) == [None if i % 2 == 0 else (16 * (i // 2), 16 * (i // 2) + 16) for i in range(16)]


def test_substep_plan_readme_tuberlin():
    plan = substep_plan(128, 8, 4)
    assert _rows(plan, 0) == [(16 * i, 16 * i + 16) for i in range(8)]
    assert _rows(plan, 1) == [None, None, None, (0, 16), None, None, None, (16, 32)]


def test_substep_plan_uneven_batch():
    # B=100, G=16: b=6, 16 + ceil(4/6) = 17 sub-steps, the last one has 4 rows
    plan = substep_plan(100, 16, 2)
    assert len(plan) == 17 and _rows(plan, 0)[-1] == (96, 100)
    covered = [r for s, _ in plan for r in range(s.start, s.stop)]
    assert covered == list(range(100))
    assert [r for r in _rows(plan, 1) if r] == [(6 * k, 6 * k + 6) for k in range(8)]
    # B=47, G=8, s=2: b=5, 8 + ceil(7/5) = 10 sub-steps; the 5th sketch slice is clipped to 47 // 2 = 23
    plan = substep_plan(47, 8, 2)
    assert _rows(plan, 0) == [(5 * i, 5 * i + 5) for i in range(9)] + [(45, 47)]
    assert [r for r in _rows(plan, 1) if r] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]


def test_substep_plan_rejects_bad_settings():
    assert sum(skt is not None for _, skt in substep_plan(256, 16, 3)) == 5  # G % s != 0 runs, as official
    with pytest.raises(ConfigError, match=r"batch_size \(8\) must be >= accum_steps \(16\)"):
        substep_plan(8, 16, 2)
    with pytest.raises(ConfigError):
        substep_plan(0, 1, 1)


class Indexed(Dataset):
    """Item i is ([tensor filled with i + offset], i % 3): lets tests see which items came."""

    def __init__(self, n: int, offset: int = 0) -> None:
        self.n, self.offset = n, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return [torch.full((3, 2, 2), float(i + self.offset))], i % 3


def _ids(crops) -> list[int]:
    return crops[0][:, 0, 0, 0].long().tolist()


def test_paired_loader_lengths_and_shapes():
    loader = PairedLoader(Indexed(10), Indexed(7, 100), batch_size=4, skt_factor=2)
    assert loader.sketch_batch_size == 2
    assert len(loader.photo_loader) == 2 and len(loader.sketch_loader) == 3 and len(loader) == 2
    batches = list(loader)
    assert len(batches) == 2
    for photos, py, sketches, sy in batches:
        assert isinstance(photos, list) and photos[0].shape == (4, 3, 2, 2) and py.shape == (4,)
        assert sketches[0].shape == (2, 3, 2, 2) and sy.shape == (2,)
        assert all(i >= 100 for i in _ids(sketches)) and all(i < 10 for i in _ids(photos))
        assert py.tolist() == [i % 3 for i in _ids(photos)]
    # the sketch loader is the shorter one here
    assert len(PairedLoader(Indexed(40), Indexed(7), batch_size=4, skt_factor=2)) == 3


def _epoch(loader: PairedLoader, epoch: int) -> list[int]:
    loader.set_epoch(epoch)
    return [i for photos, _, _, _ in loader for i in _ids(photos)]


def test_set_epoch_reshuffles_reproducibly():
    loader = PairedLoader(Indexed(32), Indexed(32), batch_size=8, skt_factor=2, seed=0)
    e0, e0_again, e1 = _epoch(loader, 0), _epoch(loader, 0), _epoch(loader, 1)
    assert e0 == e0_again and e0 != e1
    assert sorted(e0) == list(range(32)) and sorted(e1) == list(range(32))
    other_seed = PairedLoader(Indexed(32), Indexed(32), batch_size=8, skt_factor=2, seed=1)
    assert _epoch(other_seed, 0) != e0


def test_rank_shards_are_disjoint():
    shards = [_epoch(PairedLoader(Indexed(16), Indexed(16), batch_size=4, skt_factor=2, rank=r, world_size=2), 3)
              for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 8
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(16))


def test_too_small_datasets_are_named():
    with pytest.raises(DataError, match=r"photo set has 3 images .* short by 1 images"):
        PairedLoader(Indexed(3), Indexed(10), batch_size=4, skt_factor=2)
    # 2 ranks: 5 sketches -> 3 per rank, one batch of 2 per rank is fine; 2 sketches -> 1 per rank is not
    PairedLoader(Indexed(8), Indexed(3), batch_size=4, skt_factor=2, world_size=2)
    with pytest.raises(DataError, match=r"sketch set has 2 images .* short by 1 images \(needs at least 3\)"):
        PairedLoader(Indexed(8), Indexed(2), batch_size=4, skt_factor=2, world_size=2)
    with pytest.raises(ConfigError, match="rank"):
        PairedLoader(Indexed(8), Indexed(8), batch_size=4, skt_factor=2, rank=2, world_size=2)


def test_with_class_folders_and_augmentation(make_dataset):
    ds = make_dataset(photos={"a": 4, "c": 4}, sketches={"a": 2, "c": 2})
    t = tvt_train_transform(size=16)
    photos = ClassFolder(ds / "photo", ["a", "c"], t)
    sketches = ClassFolder(ds / "sketch", ["a", "c"], t)
    loader = PairedLoader(photos, sketches, batch_size=4, skt_factor=2)
    photos_x, py, sketches_x, sy = next(iter(loader))
    assert len(loader) == 2
    assert [c.shape for c in photos_x] == [(4, 3, 16, 16)] and [c.shape for c in sketches_x] == [(2, 3, 16, 16)]
    assert set(py.tolist()) <= {0, 1} and sy.dtype == torch.int64


def test_broken_image_in_a_worker_is_still_a_data_error(make_dataset):
    ds = make_dataset(photos={"a": 4}, sketches={"a": 2})
    bad = ds / "photo" / "a" / "002.png"
    bad.write_bytes(b"not a png")
    t = tvt_train_transform(size=16)
    loader = PairedLoader(ClassFolder(ds / "photo", ["a"], t), ClassFolder(ds / "sketch", ["a"], t),
                          batch_size=4, skt_factor=2, num_workers=1)
    with pytest.raises(DataError, match="002.png"):
        next(iter(loader))
