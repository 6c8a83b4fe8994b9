"""The dev click protocol's split and slice bank (training patients only), shared by this session's probes."""
from iris_engine.data.slices import SliceBank, build_slice_bank
from iris_engine.data.splits import Split, dev_split


def dev_split_and_bank(em: bool) -> tuple[Split, SliceBank | None]:
    """The 9-set dev split (bank: None, built by the evaluation), or with `em` ISBI training sections 00-09 as
    supports and 10-19 as queries (sections 10-19 count as another patient, as runs/s27/em_look.py)."""
    if not em:
        return dev_split(Split.load("assets/weights/split.json")), None
    bank = build_slice_bank(("isbi_em",), size=256)
    ids = bank.patient_ids.copy().astype(object)
    for i, case in enumerate(bank.case_ids):
        if str(case).startswith("em_") and 10 <= int(str(case)[3:]) < 20:
            ids[i] = "em_sections_10_19_dev"
    bank.patient_ids = ids
    return Split.load("runs/s21/dev_em_split.json"), bank
