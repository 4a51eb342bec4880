"""Pretrained agents: saved agent files addressed by name in the bench and the demo."""

from __future__ import annotations

import pytest

from optenv import registry
from optenv.bench import BenchConfig, BenchConfigError, parse_agent, run_bench
from optenv.registry import make_agent


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A tuned SGD saved to a file and registered as the pretrained agent 'sgd-shipped'."""
    agent = make_agent("sgd")
    agent.train("optenv/Quadratic-v0", steps=20, seeds=[0], grid=[0.01, 0.03])
    path = agent.save(tmp_path / "sgd-shipped.pt")
    monkeypatch.setattr(registry, "PRETRAINED", dict(registry.PRETRAINED))
    registry.register_pretrained("sgd-shipped", path)
    registry.register_pretrained("missing-shipped", tmp_path / "nope.pt")
    return agent, path


def test_pretrained_names_list_only_installed_files(shipped):
    assert "sgd-shipped" in registry.pretrained_names()
    assert "missing-shipped" not in registry.pretrained_names()
    assert "missing-shipped" in registry.pretrained_names(available=False)


def test_bench_runs_a_pretrained_agent_by_name_without_retraining(shipped, tmp_path):
    agent, path = shipped
    spec = parse_agent("sgd-shipped")
    assert spec.path == path and spec.name is None
    result = run_bench(BenchConfig(envs=["optenv/Quadratic-v0"], agents=["sgd-shipped"],
                                   seeds=2, steps=10, out=tmp_path / "bench", progress=False))
    r = result["envs"]["optenv/Quadratic-v0"]["agents"]["sgd-shipped"]
    assert r["hyperparams"]["lr"] == pytest.approx(agent.lr)


def test_missing_or_unknown_pretrained_agent_is_a_clear_error(shipped):
    with pytest.raises(BenchConfigError, match="not installed"):
        parse_agent("missing-shipped")
    with pytest.raises(ValueError, match="unknown pretrained agent 'nope'"):
        registry.pretrained_path("nope")
    with pytest.raises(ValueError, match="new non-empty name"):
        registry.register_pretrained("adam", "x.pt")


def test_builtin_pretrained_names_point_into_the_agents_package():
    for name in ("gps-psd", "gps-psd-paper", "l2l-quadratic", "rnnprop-mlp", "metz-cnn"):
        assert registry.pretrained_path(name).endswith(f"agents/pretrained/{name}.pt")


def test_bench_refuses_to_train_a_learned_optimizer_and_says_how(tmp_path):
    with pytest.raises(BenchConfigError, match=r"optenv train gps .*gps:DIR/agent.pt"):
        run_bench(BenchConfig(envs=["optenv/Quadratic-v0"], agents=["gps"], seeds=1,
                              steps=5, out=tmp_path, progress=False))


def test_zero_and_random_references_run_in_the_bench(tmp_path):
    result = run_bench(BenchConfig(envs=["optenv/Quadratic-v0"], agents=["zero", "random"],
                                   seeds=2, steps=5, out=tmp_path, progress=False))
    agents = result["envs"]["optenv/Quadratic-v0"]["agents"]
    zero = agents["zero"]
    assert zero["curve"]["median"][0] == pytest.approx(zero["curve"]["median"][-1])
    # the same problems per seed: random steps move every run away from f(x0)
    for moved, still in zip(agents["random"]["final_loss"], zero["final_loss"], strict=True):
        assert moved != pytest.approx(still, rel=1e-3)


def test_shipped_gps_policies_are_the_ones_the_readme_describes():
    """gps-psd: the PI² run's π over Φ with time input and gain head, AdaGrad-sized steps;
    gps-psd-paper: the paper's π over Ψ. Both step the default task without NaNs."""
    import torch

    from optenv.policy import rollout
    from optenv.registry import load_agent, task_for

    psd = load_agent(registry.pretrained_path("gps-psd")).policy()
    assert (psd.features, psd.time_scale, psd.gain_head, psd.skip, psd.step_scale) == (
        "li_malik_state", 400.0, True, True, 5.0)
    paper = load_agent(registry.pretrained_path("gps-psd-paper")).policy()
    assert paper.features == "li_malik_obs" and paper.time_scale is None
    family, _ = task_for("optenv/MLP-Digits-v0")
    for policy in (psd, paper):
        result = rollout(policy, family, 10, seeds=[1000, 1001])
        assert bool(torch.isfinite(result.objective).all()) and not bool(result.diverged.any())
