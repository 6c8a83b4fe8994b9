"""Train/test split by patient (never by slice), with held-out datasets and held-out classes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from iris_engine.data.catalog import dataset_info, default_datasets
from iris_engine.data.msd import MSDDataset
from iris_engine.data.shared_paths import shared_data_dir
from iris_engine.errors import IrisInputError

SPLIT_FORMAT_VERSION = 1


# Structures that exist in no other shared dataset, so they are truly unseen in training.
# Spleen and the airways are also held out of the single-subject sets that name them, so no training task shows them.
DEFAULT_HELD_OUT_CLASSES = (
    ("segthor_ct", "esophagus"),
    ("mscmr_cardiac_mr", "right_ventricle"),
    ("chaos_mr", "spleen"),
    ("totalseg_ct_small", "spleen"),
    ("totalseg_mr_small", "spleen"),
    ("left_atrium_mr", "left_atrium"),
    ("segthor_ct", "trachea"),
    ("covid_cxr", "airways"),
)

@dataclass
class Split:
    """Per dataset the train and test case ids, plus held-out datasets and (dataset, class) pairs."""

    seed: int
    train_cases: dict[str, list[str]]
    test_cases: dict[str, list[str]]
    patients: dict[str, dict[str, str]]
    held_out_datasets: tuple[str, ...] = ()
    held_out_classes: tuple[tuple[str, str], ...] = ()
    held_out_fraction: float = 0.25
    notes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise if any patient is on both sides or a held-out dataset has training cases."""
        for ds in set(self.train_cases) | set(self.test_cases):
            pmap = self.patients.get(ds, {})
            train_p = {pmap.get(c, c) for c in self.train_cases.get(ds, [])}
            test_p = {pmap.get(c, c) for c in self.test_cases.get(ds, [])}
            both = train_p & test_p
            if both:
                raise AssertionError(f"split leak in {ds}: patients {sorted(both)[:5]} on both sides")
        for ds in self.held_out_datasets:
            if self.train_cases.get(ds):
                raise AssertionError(f"held-out dataset {ds} has training cases")

    def is_train_class(self, dataset: str, class_name: str) -> bool:
        """True when (dataset, class) may be used in training."""
        return dataset not in self.held_out_datasets and (dataset, class_name) not in self.held_out_classes

    def patient_of(self, dataset: str, case_id: str) -> str:
        """Patient (split group) of a case."""
        return self.patients.get(dataset, {}).get(case_id, case_id)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "format_version": SPLIT_FORMAT_VERSION,
            "seed": self.seed,
            "held_out_fraction": self.held_out_fraction,
            "held_out_datasets": list(self.held_out_datasets),
            "held_out_classes": [list(p) for p in self.held_out_classes],
            "train_cases": self.train_cases,
            "test_cases": self.test_cases,
            "patients": self.patients,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Split:
        """Inverse of to_dict (validates)."""
        if data.get("format_version") != SPLIT_FORMAT_VERSION:
            raise IrisInputError(f"unsupported split format {data.get('format_version')!r}")
        return cls(
            seed=int(data["seed"]),
            train_cases={k: list(v) for k, v in data["train_cases"].items()},
            test_cases={k: list(v) for k, v in data["test_cases"].items()},
            patients={k: dict(v) for k, v in data["patients"].items()},
            held_out_datasets=tuple(data["held_out_datasets"]),
            held_out_classes=tuple((a, b) for a, b in data["held_out_classes"]),
            held_out_fraction=float(data["held_out_fraction"]),
            notes=dict(data.get("notes", {})),
        )

    def save(self, path: str | Path) -> None:
        """Write as JSON."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> Split:
        """Read a JSON split."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def fingerprint(self) -> str:
        """Stable short hash of the split content."""
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def dev_split(split: Split) -> Split:
    """Training patients only, as 'test' cases: for choosing settings without touching test patients."""
    train = {d: list(c) for d, c in split.train_cases.items()
             if len({split.patient_of(d, x) for x in c}) >= 2}
    return Split(split.seed, {}, train, split.patients, (), split.held_out_classes, split.held_out_fraction)


def split_cases(
    dataset: str,
    case_ids: list[str],
    seed: int,
    held_out_fraction: float,
    held_out: bool = False,
) -> tuple[list[str], list[str], dict[str, str], str]:
    """Split one dataset's cases by patient; returns train, test, case->patient and a note."""
    info = dataset_info(dataset)
    patients = {c: info.patient_of(c) for c in case_ids}
    groups = sorted(set(patients.values()))
    if held_out:
        return [], list(case_ids), patients, "held-out dataset: all cases test-only"
    if info.training_only:
        return list(case_ids), [], patients, "training only (no patient ids or a single subject)"
    if len(groups) < 2:
        return list(case_ids), [], patients, "single patient group: training only"
    sub_seed = [seed, *dataset.encode()]
    rng = np.random.default_rng(sub_seed)
    order = [groups[i] for i in rng.permutation(len(groups))]
    n_test = min(len(groups) - 1, max(1, int(round(held_out_fraction * len(groups)))))
    test_groups = set(order[:n_test])
    train = [c for c in case_ids if patients[c] not in test_groups]
    test = [c for c in case_ids if patients[c] in test_groups]
    return train, test, patients, f"{len(groups) - n_test} train / {n_test} test patient groups"


def make_split(
    seed: int,
    held_out_fraction: float = 0.25,
    held_out_datasets: tuple[str, ...] = ("hc18_fetal_us",),
    held_out_classes: tuple[tuple[str, str], ...] = DEFAULT_HELD_OUT_CLASSES,
    datasets: tuple[str, ...] | None = None,
    root: str | Path | None = None,
) -> Split:
    """Deterministic patient-level split of the shared datasets (or of `datasets` under `root`)."""
    base = Path(root) if root is not None else shared_data_dir()
    if base is None:
        raise IrisInputError("shared data not found: set IRIS_SHARED_DATA or pass root")
    names = datasets if datasets is not None else default_datasets()
    train: dict[str, list[str]] = {}
    test: dict[str, list[str]] = {}
    patients: dict[str, dict[str, str]] = {}
    notes: dict[str, str] = {}
    for name in names:
        ds = MSDDataset(base / name)
        tr, te, pm, note = split_cases(name, ds.case_ids, seed, held_out_fraction, name in held_out_datasets)
        train[name], test[name], patients[name], notes[name] = tr, te, pm, note
    return Split(
        seed=seed,
        train_cases=train,
        test_cases=test,
        patients=patients,
        held_out_datasets=tuple(held_out_datasets),
        held_out_classes=tuple(tuple(p) for p in held_out_classes),
        held_out_fraction=held_out_fraction,
        notes=notes,
    )
