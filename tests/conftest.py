"""Shared pytest setup: offline Hugging Face libraries, the repo root on sys.path, and the
tiny SD1.5-shaped model and imagefolder dataset, built once per session with no download."""

import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import pytest  # noqa: E402

import sspo_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Folder of a tiny random-weight StableDiffusionPipeline (64 px -> 4x8x8 latents)."""
    path = tmp_path_factory.mktemp("tiny_model") / "model"
    return str(sspo_tiny.build_tiny_pipeline(str(path)))


@pytest.fixture(scope="session")
def tiny_imagefolder_dir(tmp_path_factory):
    """Imagefolder dataset (PNGs + metadata.jsonl with a ``text`` column), 16 examples."""
    path = tmp_path_factory.mktemp("tiny_data") / "data"
    return str(sspo_tiny.build_tiny_imagefolder(str(path), num_examples=16))


@pytest.fixture(scope="session")
def tiny_motion_adapter_dir(tmp_path_factory):
    """Folder of a tiny random-weight MotionAdapter that fits the tiny model's UNet."""
    path = tmp_path_factory.mktemp("tiny_motion_adapter") / "motion_adapter"
    return str(sspo_tiny.build_tiny_motion_adapter(str(path)))
