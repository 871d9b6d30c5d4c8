"""Every notebook runs end to end in smoke mode (papermill, SMOKE=True)."""

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path, tmp_path, model):
    import papermill as pm

    pm.execute_notebook(str(path), str(tmp_path / path.name), parameters={"SMOKE": True},
                        cwd=str(path.parent), kernel_name="python3", progress_bar=False)
