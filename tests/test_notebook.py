"""docs/examples/pandas-private-mode.ipynb runs end to end in a real Jupyter kernel against the
demo server it starts, clears a pandas cohort in private mode, shows progress, and holds its
own assertions."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = (
    Path(__file__).resolve().parent.parent / "docs" / "examples" / "pandas-private-mode.ipynb"
)


def test_the_pandas_notebook_runs_end_to_end(tmp_path: Path) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    texts = [str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs]
    everything = "\n".join(texts)
    assert (
        "<CheckResult private v1: 3,002 rows, 2,850 cleared, 150 opted out, 2 invalid" in everything
    )
    assert any("checking" in str(o.get("text", "")) for o in outputs if o.get("name") == "stderr")
    assert "Traceback" not in everything
