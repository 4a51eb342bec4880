"""The command line and the examples, run for real with small budgets."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from optenv.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_list_prints_every_registered_id(capsys):
    import optenv

    assert main(["list", "--width", "250"]) == 0
    out = capsys.readouterr().out
    for env_id in optenv.registered_ids():
        assert env_id in out


def test_demo_writes_results_and_plot(tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--seed", "1"]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert not list(tmp_path.glob("*.tmp*"))
    curves = np.array(result["curves"])
    assert curves.shape == (5, 401)
    # gradient descent at a sensible learning rate trains the MLP
    best = min(result["final_loss"])
    assert best < 0.25 * float(curves[:, 0].min())


def test_console_script_is_installed():
    out = subprocess.run(["optenv", "--help"], capture_output=True, text=True, check=True)
    assert "list" in out.stdout and "demo" in out.stdout


def test_custom_optimizee_example_runs(capsys):
    runpy.run_path(str(ROOT / "examples" / "custom_optimizee.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "registered example/Rosenbrock-v0" in out
    lines = [ln for ln in out.splitlines() if ln.startswith("step")]
    first, last = (float(ln.rsplit(" ", 1)[1]) for ln in (lines[0], lines[-1]))
    assert last < 0.1 * first


def test_unknown_command_exits_nonzero():
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code != 0


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "optenv.cli", "list", "--width", "200"],
                         capture_output=True, text=True, check=True)
    assert "optenv/MLP-Digits-v0" in out.stdout
