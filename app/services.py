"""Long-lived services of one studio process: storage, segmenter (+ memory bank synced with the DB), volumes."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from app.config import SHIPPED_WEIGHTS, AppConfig
from app.demo import ensure_demo_case
from app.jobs import TrainingJobs, clean_run_partials
from app.uploads import check_case_volume, is_dicom_upload, read_dicom_upload
from iris_engine.config import InferenceConfig, ModelConfig
from iris_engine.errors import CheckpointError, IrisInputError
from iris_engine.inference import IrisSegmenter, Support
from iris_engine.input_scale import FINE_SCALE
from iris_engine.io.dicom_series import is_dicom_file
from iris_engine.io.readers import read_image
from iris_engine.io.volume import Volume
from iris_engine.memory_bank import MemoryBank
from iris_engine.model.iris import IrisModel
from iris_engine.preprocess import to_canonical
from storage import Storage
from storage.records import CaseMetadata, CaseRecord

log = logging.getLogger(__name__)
UNTRAINED_VERSION = "untrained"
VOLUME_CACHE = 4
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".npz")
KNOWN_SUFFIXES = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".npz", ".zip", ".dcm", ".dicom")


def file_suffix(name: str) -> str:
    """The recognised suffix of a file name ('.nii.gz' counts as one), or its last suffix."""
    lower = name.lower()
    return next((s for s in KNOWN_SUFFIXES if lower.endswith(s)), Path(lower).suffix)


@dataclass
class Services:
    """Everything handlers share: config, storage, the segmenter and which weights it runs."""

    config: AppConfig
    storage: Storage
    segmenter: IrisSegmenter
    weights_path: Path | None
    warning: str = ""
    jobs: TrainingJobs = field(default_factory=TrainingJobs)
    lock: threading.RLock = field(default_factory=threading.RLock)
    model_lock: threading.Lock = field(default_factory=threading.Lock)  # one segmentation at a time, all threads
    _volumes: OrderedDict[int, Volume] = field(default_factory=OrderedDict)

    @property
    def model_version(self) -> str:
        return self.segmenter.model_version

    @property
    def untrained(self) -> bool:
        return self.weights_path is None

    def load_weights(self, path: Path | None) -> None:
        """Switch to a checkpoint (None: an untrained model) and load the DB prototypes into its bank."""
        segmenter, warning = make_segmenter(path, self.config.device)
        with self.lock:
            self.segmenter, self.weights_path, self.warning = segmenter, path if not warning else None, warning
            sync_bank_from_db(self.storage, self.segmenter)

    def case_volume(self, case_id: int) -> Volume:
        """The stored case read back as a Volume (cached for the few most recent cases)."""
        with self.lock:
            if case_id in self._volumes:
                self._volumes.move_to_end(case_id)
                return self._volumes[case_id]
        case = self.storage.cases.get(case_id)
        with tempfile.TemporaryDirectory() as tmp:
            link = Path(tmp) / f"case{file_suffix(case.source_filename)}"
            shutil.copyfile(case.file_path, link)
            try:
                volume = read_image(link, max_bytes=self.config.upload_limit_bytes)
            except IrisInputError as error:
                raise without_paths(error, [link], case.source_filename) from error
        volume.source = case.source_filename
        with self.lock:
            self._volumes[case_id] = volume
            if len(self._volumes) > VOLUME_CACHE:
                self._volumes.popitem(last=False)
        return volume

    def add_upload(self, paths: list[Path]) -> tuple[list[CaseRecord], str]:
        """Store an upload: one case, or for DICOM (any file names, a zip, many files) one case per series.

        Returns the new cases and, for DICOM, what was found and skipped; nothing is stored when no series forms
        a volume.
        """
        if not paths:
            raise IrisInputError("no file was uploaded")
        check_upload_size(paths, self.config.upload_limit_bytes)
        images = [p for p in paths if file_suffix(p.name) in IMAGE_SUFFIXES and not is_dicom_file(p)]
        if len(paths) > 1 and images:  # several image files are several cases, never one DICOM series
            cases = [self._add_file(p) for p in images]
            rest = [p for p in paths if p not in images]
            more, found = self.add_upload(rest) if rest else ([], "")
            return cases + more, found
        if not is_dicom_upload(paths):
            return [self._add_file(paths[0])], ""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                upload = read_dicom_upload(paths, Path(tmp), self.config.upload_limit_bytes, self.config.max_voxels)
            except IrisInputError as error:
                raise without_paths(error, paths) from error
            cases = [self._store_case(item.volume, item.source, item.series.name) for item in upload.ready]
        return cases, upload.summary()

    def _store_case(self, volume: Volume, source: Path, name: str) -> CaseRecord:
        """Store a checked volume's file as a case and keep the volume in the cache."""
        metadata = CaseMetadata(
            name=name, source_filename=source.name, shape=volume.shape, modality=volume.modality,
            spacing=volume.spacing, affine=tuple(tuple(float(v) for v in row) for row in volume.affine))
        case = self.storage.cases.add_case(source, metadata)
        volume.source = case.source_filename
        with self.lock:
            self._volumes[case.id] = volume
        return case

    def _add_file(self, source: Path) -> CaseRecord:
        """Read one uploaded image file (not DICOM), check it and store it as a case named after the file."""
        try:
            volume = read_image(source, max_bytes=self.config.upload_limit_bytes, max_voxels=self.config.max_voxels)
            check_case_volume(volume, source.name, self.config.max_voxels)
        except IrisInputError as error:
            raise without_paths(error, [source]) from error
        return self._store_case(volume, source, _display_name(source))

    def forget_case(self, case_id: int) -> None:
        with self.lock:
            self._volumes.pop(case_id, None)

    def close(self) -> None:
        self.jobs.cancel_all(self.storage)
        self.storage.close()


def check_upload_size(paths: list[Path], limit: int) -> None:
    """Refuse an upload over the size limit from the file sizes alone, before anything is read or copied."""
    sizes = []
    for p in paths:
        if not p.is_file():
            raise IrisInputError(f"{p.name}: file not found")
        sizes.append(p.stat().st_size)
    if sum(sizes) > limit:
        raise IrisInputError(f"upload of {sum(sizes)} bytes is over this studio's limit of {limit} bytes "
                             f"({limit / 1024**2:.0f} MiB)")


def without_paths(error: IrisInputError, paths: list[Path], name: str | None = None) -> IrisInputError:
    """The error with the server's paths of these files replaced by the files' own names (or `name`)."""
    message = str(error)
    for path in sorted(paths, key=lambda p: len(str(p)), reverse=True):
        message = message.replace(str(path), name or path.name)
    for folder in sorted({p.parent for p in paths}, key=lambda p: len(str(p)), reverse=True):
        message = message.replace(f"{folder}{os.sep}", "").replace(str(folder), "the upload")
    return IrisInputError(message)


def _display_name(path: Path) -> str:
    return path.name[: -len(file_suffix(path.name))] or path.name


def make_segmenter(path: Path | None, device: str) -> tuple[IrisSegmenter, str]:
    """A segmenter from a checkpoint, or an untrained one with the warning to show when that fails."""
    config = InferenceConfig(device=device)
    if path is not None:
        try:
            return IrisSegmenter.from_checkpoint(path, config), ""
        except CheckpointError as error:
            reason = str(error)
    else:
        reason = "no weights file configured"
    torch.manual_seed(0)
    model = IrisModel(ModelConfig())
    model.version = UNTRAINED_VERSION
    log.warning("using an UNTRAINED model: %s", reason)
    return IrisSegmenter(model, config=config), f"UNTRAINED MODEL: predictions are meaningless ({reason})."


def sync_bank_from_db(storage: Storage, segmenter: IrisSegmenter) -> None:
    """Overlay the DB prototypes of this model version on the checkpoint's memory bank."""
    bank = MemoryBank.from_state_dict(segmenter.memory_bank.state_dict())
    for record in storage.prototypes.list(segmenter.model_version):
        bank.set_entry(record.class_name, record.embedding, record.update_count)
    segmenter.memory_bank = bank


def resolve_weights(config: AppConfig, storage: Storage) -> Path | None:
    """Explicit --weights, else the active registered model, else the shipped weights (None if absent)."""
    if config.weights is not None:
        return Path(config.weights)
    active = storage.models.active()
    if active is not None and active.path.is_file():
        return active.path
    return SHIPPED_WEIGHTS if SHIPPED_WEIGHTS.is_file() else None


def build_services(config: AppConfig, with_demo: bool = True) -> Services:
    """Open the store (migrations, crash cleanup, interrupted runs), create the demo case, load the model."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    storage = Storage.open(config.db_url, config.data_dir)
    if not storage.runs.list(status="running"):  # runs of a dead studio were just marked interrupted
        clean_run_partials(config.data_dir / "runs")
    if with_demo:
        ensure_demo_case(storage, config.data_dir)
    weights = resolve_weights(config, storage)
    segmenter, warning = make_segmenter(weights, config.device)
    services = Services(config, storage, segmenter, None if warning else weights, warning)
    sync_bank_from_db(storage, segmenter)
    return services


def prototype_tokens(services: Services, volume: Volume, mask: np.ndarray, class_name: str
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(T, C) task tokens of one class from an accepted mask, leaving out axial slices it fills completely; and
    its tokens at twice the input size where the class keeps a fine entry, or is new and thin (else None)."""
    canon, transform = to_canonical(volume)
    slices = transform.apply(mask.astype(bool))
    if canon.ndim == 3:
        slices[:, :, slices.all(axis=(0, 1))] = False
    elif slices.all():
        slices[:] = False
    supports = [Support(volume, transform.invert(slices).astype(np.uint8))]
    segmenter = services.segmenter
    tokens = segmenter.encode(supports, [class_name]).tokens[0]
    bank = segmenter.memory_bank
    if class_name in bank:
        fine = bank.has_fine(class_name) and not segmenter.is_3d
    else:
        fine = segmenter.encode_at_input_scale(supports, [class_name])[1] == FINE_SCALE
    return tokens, segmenter.encode(supports, [class_name], FINE_SCALE).tokens[0] if fine else None
