"""The notebooks in examples/ run top to bottom without a cell error, and are committed with their outputs.

Each notebook runs in a fresh local ipykernel through nbclient, from examples/, with one torch thread
(``OMP_NUM_THREADS=1``: on a shared CPU more threads are slower) and progress bars off
(``DIFFPROBE_PROGRESS=0``), so a run's outputs are the same as the committed ones up to timing.

To refresh the committed outputs after changing a notebook or the library:

    .venv/bin/python tests/test_notebooks.py            # executes every notebook and saves it in place
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
CELL_TIMEOUT = 900  # seconds; the localization cell is the longest (a few minutes on a loaded 2-core CPU)


def execute(path: Path):
    """Run the notebook at ``path`` in a fresh kernel; returns the executed notebook (raises on a cell error)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("DIFFPROBE_TEST_THREADS", "1"),
           "DIFFPROBE_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=env)
    return nb


def _errors(nb) -> list[str]:
    return [f"cell {i}: {o.get('ename')}: {o.get('evalue')}"
            for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            for o in cell.get("outputs", []) if o.get("output_type") == "error"]


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "localization.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_with_outputs(path):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code), "run `python tests/test_notebooks.py` and commit"
    assert all(c.get("outputs") for c in code if not c.source.rstrip().endswith(";")), "a code cell has no output"
    assert _errors(nb) == []


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_runs_without_errors(path):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = execute(path)  # nbclient raises CellExecutionError with the cell's traceback on the first error
    assert _errors(nb) == []


if __name__ == "__main__":
    import nbformat

    for notebook in (Path(a) for a in sys.argv[1:]) if sys.argv[1:] else NOTEBOOKS:
        print(f"executing {notebook} ...", flush=True)
        nbformat.write(execute(notebook), notebook)
