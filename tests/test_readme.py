"""The README's Python snippet runs and gives the values its comments state;
its commands name no path outside the repository."""
import re
from pathlib import Path

import numpy as np

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _blocks(lang):
    return re.findall(rf"^```{lang}\n(.*?)^```", README, flags=re.M | re.S)


def test_python_snippet_runs_and_matches_its_comments():
    (code,) = _blocks("python")
    ns = {}
    exec(compile(code, "README.md", "exec"), ns)
    np.testing.assert_allclose(ns["p"], [[0.6, 0.4, 0.0]], rtol=0, atol=1e-15)
    np.testing.assert_allclose(ns["g"], [[0.5, -0.5, 0.0]], rtol=0, atol=1e-15)
    t = np.array([0.3, -0.2, 1.5])
    np.testing.assert_allclose(ns["res"].marginals, np.clip(t, 0, 1), rtol=0, atol=1e-12)
    bits, scores = ns["bits"], ns["scores"]
    assert bits.shape == (4, 3) and np.array_equal(scores, bits @ t)
    assert np.array_equal(bits[0], [1, 0, 1])                        # the best: 1[t > 0]


def test_commands_name_no_workspace_path():
    for block in _blocks("bash"):
        assert "shared" not in block and "/work" not in block and "REFIMPL_DATA=" not in block, block
    first_screen = README.split("---", 1)[0]
    assert 'pip install -e ".[test]" && python -m pytest -q -m "not slow"' in first_screen
    assert "python -m experiments.bitvae" in first_screen
