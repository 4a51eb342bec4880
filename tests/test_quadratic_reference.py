"""The quadratic reference benchmark (benchmarks/quadratic_reference.py) on a few problems."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from optenv.policy import make_problem, rollout
from optenv.problems.quadratic import QuadraticFamily
from optenv.registry import load_agent, pretrained_path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quadratic_reference.py"


def run(monkeypatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *argv])
    runpy.run_path(str(SCRIPT), run_name="__main__")


def test_learned_rows_are_scored_against_tuned_nag(monkeypatch, tmp_path, capsys):
    out = tmp_path / "ref.json"
    run(monkeypatch, "--problems", "6", "--train-problems", "4", "--first-seed", "50",
        "--agent", "l2l-quadratic", "--json", str(out))
    report = json.loads(out.read_text())
    assert report["problems"] == 6 and report["first_seed"] == 50
    rows = {(r["baseline"], r["which"]): r for r in report["rows"]}
    nag = rows["nag", "our tuning"]
    learned = rows["l2l-quadratic", "learned"]
    assert nag["vs_tuned_nag"] == 1.0
    assert learned["vs_tuned_nag"] == pytest.approx(learned["mean"] / nag["mean"])
    # the row is Σ_{t=0}^{99} f(θ_t) of the agent on the problems with seeds 50..55
    problem, x0 = make_problem(QuadraticFamily(dim=10, init_std=0.0), range(50, 56))
    objective = rollout(load_agent(pretrained_path("l2l-quadratic")).policy(), problem, 100,
                        x0=x0).objective.double()
    assert learned["mean"] == pytest.approx(float(objective[:, :100].sum(1).mean()), rel=1e-9)
    assert "× tuned NAG" in capsys.readouterr().out


def test_evaluation_problems_may_not_overlap_the_tuning_problems(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        run(monkeypatch, "--problems", "6", "--train-problems", "10", "--first-seed", "5")
    assert "--first-seed must be >= --train-problems (10)" in capsys.readouterr().err
