"""Split, SliceBank and EpisodeSampler on the real shared datasets (skipped when ../shared/data is absent)."""

from __future__ import annotations

import pytest

from iris_engine.config import TrainConfig
from iris_engine.data.catalog import default_datasets
from iris_engine.data.episodes import EpisodeConfig, EpisodeSampler, iter_eval_pairs
from iris_engine.data.shared_paths import shared_data_dir
from iris_engine.data.slices import SliceBank, build_slice_bank
from iris_engine.data.splits import Split, make_split

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(shared_data_dir() is None, reason="shared data not found (../shared/data or IRIS_SHARED_DATA)"),
]


@pytest.fixture(scope="module")
def bank() -> SliceBank:
    return build_slice_bank()  # cached under runs/cache after the first build (~40 s on 2 cores)


@pytest.fixture(scope="module")
def split() -> Split:
    return make_split(0)


def test_split_by_patient(split: Split) -> None:
    assert make_split(0).to_dict() == split.to_dict()
    assert make_split(1).to_dict() != split.to_dict()
    for ds in default_datasets():
        train_p = {split.patient_of(ds, c) for c in split.train_cases[ds]}
        test_p = {split.patient_of(ds, c) for c in split.test_cases[ds]}
        assert not train_p & test_p, ds
    assert split.train_cases["hc18_fetal_us"] == [] and len(split.test_cases["hc18_fetal_us"]) == 200
    for ds in ("covid_ct_infection", "brain_mr_single", "totalseg_ct_small", "totalseg_mr_small"):
        assert split.test_cases[ds] == [], ds
    assert {split.patient_of("polypgen_endoscopy", c) for c in split.test_cases["polypgen_endoscopy"]} < {
        "c1",
        "c3",
        "c5",
        "cx",
        "seq",
    }


def test_training_episodes_respect_split(bank: SliceBank, split: Split) -> None:
    cfg = EpisodeConfig.from_train_config(TrainConfig(), supports_per_episode=2)
    sampler = EpisodeSampler(bank, split, cfg, seed=0)
    train_cases = {(ds, c) for ds, cases in split.train_cases.items() for c in cases}
    test_patients = {(ds, split.patient_of(ds, c)) for ds in split.test_cases for c in split.test_cases[ds]}
    seen = set()
    for _ in range(60):
        batch = sampler.sample_batch(8)
        for b in range(8):
            tasks = [t for t in batch.task_names[b] if t is not None]
            assert tasks
            ds = tasks[0][0]
            seen.add(ds)
            for t in tasks:
                assert t[0] != "hc18_fetal_us" and t not in split.held_out_classes
            if ds == "superpixel":
                row = int(batch.support_cases[b][0].rsplit("_", 1)[1])
                assert (bank.datasets[bank.dataset_index[row]], bank.case_ids[row]) in train_cases
                continue
            if ds == "synthetic":
                continue
            assert not {(ds, p) for p in batch.support_cases[b] + batch.query_cases[b]} & test_patients
            if not batch.same_subject[b]:
                assert not set(batch.support_cases[b]) & set(batch.query_cases[b])
    assert {"synthetic", "superpixel", "chaos_mr", "segthor_ct"} <= seen


def test_eval_pairs_held_out_class(bank: SliceBank, split: Split) -> None:
    pairs = list(iter_eval_pairs(bank, split, "chaos_mr", "spleen", n_supports=1, seed=0))
    assert pairs
    test = set(split.test_cases["chaos_mr"])
    for p in pairs:
        assert p.query_case in test and set(p.support_cases) <= test and p.query_patient not in p.support_patients
