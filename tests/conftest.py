"""Shared fixtures: the default model (installed by `make install`) and the shared real data."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def model():
    from anatomy.models import ModelNotAvailableError, load_model

    try:
        return load_model()
    except ModelNotAvailableError as err:  # a fresh machine without `make install`
        pytest.skip(f"default model not installed: {err}")


@pytest.fixture(scope="session")
def tokenizer(model):
    return model.tokenizer


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"real data slices not found at {SHARED_DATA} (../shared/data); skipping")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sae():
    from anatomy.saes import load_sae, shipped_saes

    if not shipped_saes():
        pytest.skip("no SAE shipped under anatomy/assets")
    return load_sae()
