"""The bench: results schema, resume from the tuning cache, speedup, divergence, CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from optenv.bench import (
    RESULTS_SCHEMA,
    BenchConfig,
    BenchConfigError,
    format_speedup,
    plot_path,
    run_bench,
    speedup,
    validate_results,
    validate_schema,
)
from optenv.cli import main
from optenv.policy import Agent, StepPolicy
from optenv.registry import AGENTS, task_for
from optenv.tuning import tune_grid

ENV = "optenv/Quadratic-v0"
GRID = (0.001, 0.01, 0.03)


class GD(StepPolicy):
    """Δx = −lr · g, with lr a float or one value per instance."""

    features = "gradient"

    def __init__(self, lr: float | torch.Tensor) -> None:
        self.lr = torch.as_tensor(lr, dtype=torch.float32)

    def reset(self, n, groups, batch):
        return {}

    def step(self, features, state):
        lr = self.lr.reshape(-1, 1) if self.lr.ndim else self.lr
        return -lr * features[..., 0], state


class CountingGD(Agent):
    """A baseline for the tests: gradient descent, lr tuned by tune_grid; counts train()."""

    name = "test-gd"
    calls: ClassVar[list[str]] = []

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.lr = float(lr)

    def train(self, env_id, steps=None, seeds=(0, 1, 2), grid=None, metric="final",
              **env_kwargs) -> dict[str, Any]:
        type(self).calls.append(env_id)
        family, horizon = task_for(env_id, **env_kwargs)
        steps = steps or horizon
        result = tune_grid(GD, family, steps, grid=grid or GRID, seeds=seeds, metric=metric)
        self.lr = result.best
        self.training_cost = {"env_steps": float(len(result.grid) * len(seeds) * steps),
                              "wall_s": result.wall_s}
        return {"hyperparams": self.hyperparams(), "tuning": result.to_dict()}

    def policy(self) -> StepPolicy:
        return GD(self.lr)

    def hyperparams(self) -> dict[str, float]:
        return {"lr": self.lr}

    def state_dict(self):
        return {"lr": self.lr}

    def load_state_dict(self, state):
        self.lr = float(state["lr"])

    def config(self):
        return {"lr": self.lr}


class FixedGD(CountingGD):
    """Never tunes: the learning rate it was built with (a huge one diverges)."""

    calls: ClassVar[list[str]] = []

    def train(self, env_id, **kwargs):
        type(self).calls.append(env_id)
        return {"hyperparams": self.hyperparams(), "tuning": {}}


class HugeLR(FixedGD):
    def __init__(self, lr: float = 1e4) -> None:
        super().__init__(lr)


@pytest.fixture
def agents(monkeypatch):
    """Registers the test agents as 'gd', 'adam' (a tuned GD standing in for Adam), 'huge'."""
    CountingGD.calls.clear()
    FixedGD.calls.clear()
    for name, cls in (("gd", "CountingGD"), ("adam", "CountingGD"), ("huge", "HugeLR")):
        monkeypatch.setitem(AGENTS, name, f"tests.test_bench:{cls}")
    return CountingGD.calls


def _config(out: Path, **kw) -> BenchConfig:
    base = {"envs": [ENV], "agents": ["gd", "adam", "huge"], "seeds": 2, "steps": 20,
            "out": out, "grid": GRID, "progress": False}
    return BenchConfig(**{**base, **kw})


def test_tiny_bench_writes_valid_results_report_and_plot(tmp_path, agents):
    results = run_bench(_config(tmp_path))
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    validate_results(on_disk)
    assert RESULTS_SCHEMA["type"] == "object"
    env = on_disk["envs"][ENV]
    assert env["eval_seeds"] == [1000, 1001] and env["steps"] == 20
    gd = env["agents"]["gd"]
    assert gd["hyperparams"]["lr"] in GRID and gd["source"] == "tuned"
    assert len(gd["final_loss"]) == 2 and not any(gd["diverged"])
    assert gd["curve"]["steps"][0] == 0 and gd["curve"]["steps"][-1] == 20
    assert gd["curve"]["median"][-1] < gd["curve"]["median"][0]
    assert gd["final_loss"][0] < gd["curve"]["q75"][0]  # it trained
    # the same tuned rule with another name: speedup 1 up to ties, reported vs itself
    assert env["agents"]["adam"]["speedup_over_adam"] == {"value": pytest.approx(1.0, abs=0.1),
                                                          "lower_bound": False}
    report = (tmp_path / "report.md").read_text()
    assert f"## {ENV}" in report and "| agent | median final loss |" in report
    assert "speedup vs Adam" in report
    for label in ("gd", "adam", "huge"):
        assert f"| {label} |" in report
    png = plot_path(tmp_path, ENV)
    assert png.name == "optenv_Quadratic-v0.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.rglob("*.tmp"))
    tuning = json.loads((tmp_path / "tuning.json").read_text())
    assert {e["agent"] for e in tuning["entries"].values()} == {"gd", "adam", "huge"}


def test_validate_results_rejects_broken_objects(tmp_path, agents):
    good = run_bench(_config(tmp_path, agents=["gd"]))
    validate_results(good)
    broken = []
    b = copy.deepcopy(good)
    del b["envs"][ENV]["agents"]["gd"]["final_loss"]
    broken.append((b, "final_loss"))
    b = copy.deepcopy(good)
    b["envs"][ENV]["agents"]["gd"]["wall_s"] = "fast"
    broken.append((b, "wall_s"))
    b = copy.deepcopy(good)
    b["envs"][ENV]["agents"]["gd"]["diverged"] = [0, 1]
    broken.append((b, "diverged"))
    b = copy.deepcopy(good)
    b["envs"][ENV]["agents"]["gd"]["auc"] = [1.0]  # one value for two seeds
    broken.append((b, "auc"))
    b = copy.deepcopy(good)
    b["envs"][ENV]["agents"]["gd"]["curve"]["extra"] = []
    broken.append((b, "extra"))
    b = copy.deepcopy(good)
    del b["config"]
    broken.append((b, "config"))
    for obj, word in broken:
        with pytest.raises(ValueError, match=word):
            validate_results(obj)
    # the validator itself: type lists, items, additionalProperties as a schema
    schema = {"type": "object", "additionalProperties": {"type": "array",
                                                         "items": {"type": ["integer", "null"]}}}
    validate_schema({"a": [1, None]}, schema)
    for bad in ({"a": [1.5]}, {"a": [True]}, {"a": 1}, []):
        with pytest.raises(ValueError):
            validate_schema(bad, schema)


def test_second_run_reuses_tuning_and_gives_identical_results(tmp_path, agents):
    first = run_bench(_config(tmp_path))
    calls = list(agents)
    assert calls.count(ENV) == 2  # gd and adam tuned once each
    second = run_bench(_config(tmp_path))
    assert agents == calls  # no train() call the second time
    assert FixedGD.calls == [ENV]  # 'huge' trained on the first run only

    def strip(r):
        r = copy.deepcopy(r)
        for a in r["envs"][ENV]["agents"].values():
            a.pop("wall_s")
        return r

    assert strip(first) == strip(second)
    # another steps count is another tuning problem: tuned again
    run_bench(_config(tmp_path, steps=10, agents=["gd"]))
    assert len(agents) == len(calls) + 1


def test_resume_without_agent_file_rebuilds_from_hyperparams(tmp_path, agents):
    first = run_bench(_config(tmp_path, agents=["gd"]))
    for f in (tmp_path / "agents").iterdir():
        f.unlink()
    n = len(agents)
    second = run_bench(_config(tmp_path, agents=["gd"]))
    assert len(agents) == n
    a, b = (r["envs"][ENV]["agents"]["gd"] for r in (first, second))
    assert a["final_loss"] == b["final_loss"] and a["hyperparams"] == b["hyperparams"]


def test_speedup_on_synthetic_curves():
    adam = np.linspace(1.0, 0.0, 101)  # reaches 1 - t/100 at step t
    assert speedup(adam, 0.5, 100) == (0.5, False)  # Adam needs 50 steps: half as fast
    assert speedup(adam, 0.5, 25) == (2.0, False)  # agent got there in 25: twice as fast
    assert speedup(adam, 0.0, 100) == (1.0, False)
    assert speedup(adam, -0.1, 100) == (1.0, True)  # Adam never gets there: > 1.0
    assert speedup(adam, 2.0, 100) == (0.0, False)  # worse than the start
    assert format_speedup(1.0, True) == ">1.0"
    assert format_speedup(0.5, False) == "0.50"
    noisy = np.array([5.0, 3.0, 4.0, 2.0, 2.5])  # the first step at or below the target
    assert speedup(noisy, 3.0, 4) == (0.25, False)
    assert speedup(noisy, 2.4, 2) == (1.5, False)
    with pytest.raises(ValueError):
        speedup(adam, 0.5, 0)


def test_diverging_agent_is_reported_not_dropped(tmp_path, agents):
    results = run_bench(_config(tmp_path, agents=["huge", "gd"]))
    huge = results["envs"][ENV]["agents"]["huge"]
    assert huge["diverged"] == [True, True]
    assert len(huge["final_loss"]) == 2 and len(huge["auc"]) == 2
    gd = results["envs"][ENV]["agents"]["gd"]
    assert all(v is None or v > 10 * max(gd["final_loss"]) for v in huge["final_loss"])
    report = (tmp_path / "report.md").read_text()
    assert "| huge |" in report and "| 2/2 |" in report
    assert "speedup vs Adam" not in report  # no adam among the agents


def test_saved_agent_is_used_as_is(tmp_path, agents):
    path = CountingGD(lr=0.02).save(tmp_path / "mine.pt")
    results = run_bench(_config(tmp_path / "run", agents=[f"mine:{path}"]))
    mine = results["envs"][ENV]["agents"]["mine"]
    assert mine["source"] == "path" and mine["hyperparams"] == {"lr": 0.02}
    assert agents == []  # never trained


def test_bad_config_is_an_error_before_any_work(tmp_path, agents):
    saved = CountingGD().save(tmp_path / "gd.pt")
    for kw, word in (({"envs": ["optenv/Quadratik-v0"]}, "Quadratic"),
                     ({"agents": ["nope"]}, "unknown agent"),
                     ({"agents": ["x:missing/agent.pt"]}, "no saved agent"),
                     ({"env_kwargs": {"bogus": 1}}, "bogus"),
                     ({"metric": "best"}, "metric"),
                     ({"agents": ["gd", f"gd:{saved}"]}, "unique")):
        with pytest.raises(BenchConfigError, match=word):
            run_bench(_config(tmp_path / "bad", **kw))
    assert not (tmp_path / "bad").exists()


def test_cli_bench_bad_input_exits_2_with_a_clear_message(tmp_path, capsys, agents):
    for argv, word in (
        (["--envs", "optenv/Nope-v0", "--agents", "gd"], "unknown env 'optenv/Nope-v0'"),
        (["--envs", ENV, "--agents", "nope"], "unknown agent 'nope'"),
        (["--envs", ENV, "--agents", "gd", "--env-kwargs", "{dim: 3"], "not valid JSON"),
        (["--envs", ENV, "--agents", "gd", "--env-kwargs", "[1]"], "JSON object"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(["bench", *argv, "--out", str(tmp_path), "--quiet"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert word in err and "Traceback" not in err


def test_cli_bench_and_eval_with_a_saved_agent(tmp_path, capsys, agents):
    assert main(["bench", "--envs", ENV, "--agents", "gd", "--seeds", "2", "--steps", "15",
                 "--grid", "0.01", "0.03", "--env-kwargs", '{"dim": 4}',
                 "--out", str(tmp_path / "b"), "--quiet"]) == 0
    r = json.loads((tmp_path / "b" / "results.json").read_text())
    validate_results(r)
    assert r["config"]["env_kwargs"] == {"dim": 4} and r["config"]["grid"] == [0.01, 0.03]
    assert r["envs"][ENV]["agents"]["gd"]["hyperparams"]["lr"] in (0.01, 0.03)

    path = CountingGD(lr=0.03).save(tmp_path / "saved.pt")
    capsys.readouterr()
    assert main(["eval", "--agent", str(path), "--env", ENV, "--seeds", "3", "--steps", "10",
                 "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    r = json.loads((tmp_path / "e" / "results.json").read_text())
    validate_results(r)
    saved = r["envs"][ENV]["agents"]["saved"]
    assert saved["hyperparams"] == {"lr": 0.03} and len(saved["final_loss"]) == 3
    for seed, loss in zip((1000, 1001, 1002), saved["final_loss"], strict=True):
        assert f"seed {seed}: {loss:.6g}" in out
    assert (tmp_path / "e" / "report.md").exists() and plot_path(tmp_path / "e", ENV).exists()
    assert agents == ["optenv/Quadratic-v0"]  # bench tuned gd once; eval trained nothing


def test_real_baselines_bench_and_resume(tmp_path, monkeypatch):
    import agents.baselines as baselines
    calls = []
    train = baselines.BaselineAgent.train

    def counting_train(self, env_id, **kwargs):
        calls.append(self.name)
        return train(self, env_id, **kwargs)

    monkeypatch.setattr(baselines.BaselineAgent, "train", counting_train)
    config = BenchConfig(envs=[ENV], agents=["sgd", "adam"], seeds=2, steps=20,
                         grid=(0.01, 0.1, 0.3), out=tmp_path, progress=False)
    first = run_bench(config)
    assert sorted(calls) == ["adam", "sgd"]
    second = run_bench(config)
    assert sorted(calls) == ["adam", "sgd"]  # tuned hyperparameters came from tuning.json
    validate_results(json.loads((tmp_path / "results.json").read_text()))
    for name in ("sgd", "adam"):
        a, b = (r["envs"][ENV]["agents"][name] for r in (first, second))
        assert a["hyperparams"] == b["hyperparams"] and a["hyperparams"]["lr"] in (0.01, 0.1, 0.3)
        assert a["final_loss"] == b["final_loss"] and a["curve"] == b["curve"]
        assert a["training_cost"]["env_steps"] == 3 * 3 * 20
    adam = first["envs"][ENV]["agents"]["adam"]
    assert not adam["speedup_over_adam"]["lower_bound"]
    assert 0 < adam["speedup_over_adam"]["value"] <= 1  # Adam reaches its own final loss
