"""Training runs where only the numerical stack is installed (a lent GPU machine carries no DICOM, storage or UI
packages): its modules must import without them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent(
    """
    import importlib.abc
    import sys

    ABSENT = {"pydicom", "highdicom", "sqlalchemy", "gradio", "onnx", "onnxruntime"}


    class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ABSENT:
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None


    sys.meta_path.insert(0, Absent())
    import iris_engine.training.bank_refresh
    import iris_engine.training.click_training
    import iris_engine.training.run
    import iris_engine.training.soup

    print("imported")
    """
)


def test_training_imports_without_dicom_storage_ui_or_onnx_packages():
    done = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "imported"
