"""The workflow examples (focal series, LARBED, compressed, incoherent) run end to end on
their built-in simulated data, write figures, and reach the measured accuracy."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, tmp_path: Path, *extra: str):
    namespace = runpy.run_path(str(EXAMPLES / name), run_name="example")
    return namespace["main"](["--quick", "--output", str(tmp_path), *extra])


def assert_run_figures(folder: Path) -> None:
    """The run's figures exist and the loss curve (a negative Poisson loss here) is drawn."""
    from matplotlib.image import imread

    for name in ("object", "probe", "positions", "loss"):
        assert (folder / "figures" / f"{name}.png").is_file(), name
    loss = imread(folder / "figures" / "loss.png")[..., :3]
    h, w = loss.shape[:2]
    assert loss[h // 4: 3 * h // 4, w // 8: w // 2].std() > 0.02, "loss curve looks blank"


def test_focal_series(tmp_path):
    assert run_example("focal_series.py", tmp_path) > 0.97  # measured 0.989
    assert_run_figures(tmp_path)


def test_larbed(tmp_path):
    assert run_example("larbed.py", tmp_path) > 0.93  # measured 0.965
    assert (tmp_path / "co.npy").exists()
    assert_run_figures(tmp_path)


def test_compressed(tmp_path):
    assert run_example("compressed_ptychography.py", tmp_path) > 0.92  # measured 0.953
    assert (tmp_path / "masks.npy").exists()


def test_incoherent(tmp_path):
    figures = run_example("incoherent.py", tmp_path)
    # measured 0.720 and 0.20: mixed-state probes converge slowly (see the issue notes)
    assert figures["correlation"] > 0.65
    assert figures["background_error"] < 0.35


@pytest.mark.parametrize("name", ["focal_series.py", "larbed.py", "compressed_ptychography.py",
                                  "incoherent.py"])
def test_example_has_a_docstring_and_main(name):
    text = (EXAMPLES / name).read_text()
    assert text.startswith('"""') and "__main__" in text
