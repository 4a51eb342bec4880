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


def test_demo_writes_results_and_plot(tmp_path, capsys):
    from optenv.bench import plot_path, validate_results
    from optenv.demo import DEMO_AGENTS, DEMO_ENV, demo_agents

    assert main(["demo", "--out", str(tmp_path), "--steps", "40", "--seeds", "2"]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    validate_results(result)
    assert plot_path(tmp_path, DEMO_ENV).stat().st_size > 0
    assert "| adam |" in (tmp_path / "report.md").read_text()
    assert not list(tmp_path.glob("*.tmp*"))
    agents = result["envs"][DEMO_ENV]["agents"]
    assert list(agents) == demo_agents()
    assert demo_agents()[: len(DEMO_AGENTS)] == list(DEMO_AGENTS)
    for r in agents.values():
        assert len(r["final_loss"]) == 2 and r["curve"]["steps"][-1] == 40
    # tuned baselines train the MLP
    start = agents["adam"]["curve"]["median"][0]
    best = min(float(np.median(r["final_loss"])) for r in agents.values())
    assert best < 0.5 * start
    assert DEMO_ENV in capsys.readouterr().out  # the printed table


def test_console_script_is_installed():
    out = subprocess.run(["optenv", "--help"], capture_output=True, text=True, check=True)
    for command in ("list", "bench", "eval", "demo", "speed"):
        assert command in out.stdout


def _run_example(name: str, capsys) -> tuple[str, float, float]:
    """Run ``examples/NAME`` as a script: its output and first/last printed step losses."""
    runpy.run_path(str(ROOT / "examples" / name), run_name="__main__")
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("step")]
    first, last = (float(ln.rsplit(" ", 1)[1]) for ln in (lines[0], lines[-1]))
    return out, first, last


def test_custom_optimizee_example_runs(capsys):
    out, first, last = _run_example("custom_optimizee.py", capsys)
    assert "registered example/Rosenbrock-v0" in out
    assert last < 0.1 * first


def test_quickstart_example_runs(capsys):
    out, first, last = _run_example("quickstart.py", capsys)
    assert "tuned Adam: lr =" in out
    assert last < 0.1 * first  # the tuned rule trains the user's nn.Module


def test_benchmark_example_runs(tmp_path, capsys, monkeypatch):
    from optenv.bench import validate_results

    monkeypatch.setattr(sys, "argv", ["benchmark.py", str(tmp_path)])
    runpy.run_path(str(ROOT / "examples" / "benchmark.py"), run_name="__main__")
    assert str(tmp_path / "results.json") in capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    validate_results(results)
    assert len(results["envs"]) == 2
    assert all(list(env["agents"]) == ["sgd", "momentum", "adam"]
               for env in results["envs"].values())


def test_unknown_command_exits_nonzero():
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code != 0


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "optenv.cli", "list", "--width", "200"],
                         capture_output=True, text=True, check=True)
    assert "optenv/MLP-Digits-v0" in out.stdout


def test_train_with_an_unknown_env_is_a_clear_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "gps", "--env", "optenv/Nope-v0", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "unknown env 'optenv/Nope-v0'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_train_tunes_and_saves_a_baseline(tmp_path, capsys):
    from optenv.registry import load_agent

    argv = ["train", "sgd", "--env", "optenv/Quadratic-v0", "--out", str(tmp_path),
            "--set", "steps=20", "--set", "grid=[0.001, 0.01]", "--env-kwargs", '{"dim": 4}']
    assert main(argv) == 0
    agent = load_agent(tmp_path / "agent.pt")
    assert agent.lr in (0.001, 0.01)
    assert "trained sgd on optenv/Quadratic-v0" in capsys.readouterr().out


def test_train_rejects_a_malformed_set_option(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "sgd", "--env", "optenv/Quadratic-v0", "--out", str(tmp_path),
              "--set", "no-equals"])
    assert exc.value.code == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_global_threads_option_sets_torch_threads(tmp_path, monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    assert main(["--threads", "3", "list"]) == 0
    assert main(["--threads", "0", "list"]) == 0  # 0: leave torch's default
    assert calls == [3]
    with pytest.raises(SystemExit):
        main(["--threads", "-2", "list"])


def test_speed_command_writes_interleaved_medians(tmp_path, capsys):
    out = tmp_path / "speed.json"
    argv = ["speed", "--steps", "4", "--num-envs", "2", "--repeats", "3", "--threads", "1",
            "--json", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["repeats"] == 3 and result["torch_threads"] == 1
    for name in ("env_over_bare_gradient", "env_over_bare_li_malik_obs", "vector_over_sync"):
        lo, hi = result["range"][name]
        assert 0 < lo <= result[name] <= hi  # the median lies within the rounds' range
    assert result["vector_steps_per_s"] > 0 and result["bare_torch_ms_per_step"] > 0
    assert "median of 3 interleaved" in capsys.readouterr().out
    with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
        main(["speed", "--repeats", "0"])
    with pytest.raises(ValueError, match="threads must be >= 1 or None, got -2"):
        main(["speed", "--threads", "-2"])
