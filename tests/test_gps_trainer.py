"""The GPS trainer, agent and ``optenv train``: tiny runs on optenv/Quadratic-v0."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import optenv
from gps.agent import GPSAgent
from gps.policy import CoordinatewiseLSTMPolicy, InitialControllerPolicy
from gps.trainer import METRIC_KEYS, GPSConfig, GPSTrainer
from optenv.cli import main
from optenv.policy import rollout
from optenv.registry import load_agent, task_for

ENV = "optenv/Quadratic-v0"
TINY = {"horizon": 15, "hidden": 8, "s_steps": 10, "coords": 64}


def _config(iterations: int) -> GPSConfig:
    return GPSConfig(env_id=ENV, iterations=iterations, samples=4, seed=3, **TINY)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _strip_times(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith("time_")}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gps_full")
    GPSTrainer(_config(2), out=out).run()
    return out


def test_tiny_run_writes_metrics_and_checkpoint(full_run: Path) -> None:
    records = _lines(full_run / "metrics.jsonl")
    assert len(records) == 2
    assert [r["iteration"] for r in records] == [1, 2]
    for r in records:
        assert set(r) == set(METRIC_KEYS)
        assert all(math.isfinite(float(r[k])) for k in METRIC_KEYS), r
        assert r["eta"] > 0 and r["nu_mean"] > 0 and r["kl_psi_prev"] >= 0
    ck = torch.load(full_run / "checkpoint.pt", weights_only=True)
    assert ck["iteration"] == 2
    assert ck["psi"]["K"].shape == (1, 15, 1, 76)
    assert ck["psi"]["K"].dtype == torch.float64
    assert json.loads((full_run / "config.json").read_text())["samples"] == 4


def test_trust_region_respected(full_run: Path) -> None:
    for r in _lines(full_run / "metrics.jsonl"):
        assert r["kl_psi_prev"] <= _config(1).epsilon * (1 + 1e-6)


def test_resume_reproduces_uninterrupted_run(full_run: Path, tmp_path: Path) -> None:
    first = GPSTrainer(_config(1), out=tmp_path)
    first.run()
    assert len(_lines(tmp_path / "metrics.jsonl")) == 1
    resumed = GPSTrainer(_config(2), out=tmp_path, resume=True)
    assert resumed.iteration == 1
    resumed.run()
    got, want = _lines(tmp_path / "metrics.jsonl"), _lines(full_run / "metrics.jsonl")
    assert len(got) == 2
    assert _strip_times(got[1]) == _strip_times(want[1])
    assert _strip_times(got[0]) == _strip_times(want[0])


def test_policy_is_a_working_step_policy(full_run: Path) -> None:
    trainer = GPSTrainer(_config(2), out=full_run, resume=True)
    assert trainer.iteration == 2
    family, _ = task_for(ENV)
    r = rollout(trainer.policy, family, 5, seeds=[0, 1])
    assert r.objective.shape == (2, 6)
    assert bool(torch.isfinite(r.objective).all())


def test_agent_round_trip(tmp_path: Path) -> None:
    agent = optenv.make_agent("gps", seed=1, **TINY)
    assert isinstance(agent, GPSAgent)
    agent.train(ENV, iterations=1, samples=2)
    assert agent.training_cost["env_steps"] == 1 * 2 * 15 + 2 * 15  # rollouts + π eval
    assert agent.training_cost["wall_s"] > 0
    path = agent.save(tmp_path / "gps.pt")
    loaded = load_agent(path)
    assert isinstance(loaded, GPSAgent)
    assert loaded.training_cost == agent.training_cost
    p, q = agent.policy(), loaded.policy()
    assert isinstance(q, CoordinatewiseLSTMPolicy)
    family, _ = task_for(ENV)
    a = rollout(p, family, 6, seeds=[5, 6])
    b = rollout(q, family, 6, seeds=[5, 6])
    assert torch.equal(a.objective, b.objective)
    assert torch.equal(a.x, b.x)


def test_untrained_agent_policy_runs() -> None:
    agent = optenv.make_agent("gps", hidden=4)
    family, _ = task_for(ENV)
    r = rollout(agent.policy(), family, 3, seeds=[0])
    assert bool(torch.isfinite(r.objective).all())


def test_cli_train(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["train", "gps", "--env", ENV, "--iterations", "1", "--samples", "2",
            "--horizon", "10", "--hidden", "4", "--out", str(out), "--seed", "2", "--quiet"]
    assert main(argv) == 0
    assert len(_lines(out / "metrics.jsonl")) == 1
    assert (out / "checkpoint.pt").is_file()
    assert load_agent(out / "agent.pt").policy().hidden == 4
    assert main([*argv[:5], "2", *argv[6:], "--resume"]) == 0
    assert [r["iteration"] for r in _lines(out / "metrics.jsonl")] == [1, 2]
    # the resumed agent counts both iterations: 2 rollouts of 10 steps + 2 eval runs each
    loaded = load_agent(out / "agent.pt")
    assert loaded.training_cost["env_steps"] == 2 * (2 * 10 + 2 * 10)
    # the bench's table shows what it was trained with, not the constructor's defaults
    shown = loaded.hyperparams()
    assert shown == {"env_id": ENV, "samples": 2, "horizon": 10, "hidden": 4, "seed": 2,
                     "iterations": 2}
    from_ck = GPSAgent.from_checkpoint(out / "checkpoint.pt").hyperparams()
    assert from_ck == shown


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="samples"):
        GPSConfig(samples=0)
    with pytest.raises(ValueError, match="epsilon"):
        GPSConfig(epsilon=0.0)


@pytest.mark.parametrize("bad", [-1, 2**31, 2**70, True, 1.5])
def test_run_seeds_are_checked_for_every_trainer(bad) -> None:
    """Derived generator seeds (seed·1_000_003 + i) must fit manual_seed's 64 bits."""
    from agents.metatrain import MetaTrainConfig
    from agents.metz import MetzConfig

    for config in (GPSConfig, MetaTrainConfig, MetzConfig):
        with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*31\)"):
            config(seed=bad)
    assert GPSConfig(seed=2**31 - 1).seed == 2**31 - 1


def test_diverging_samples_are_frozen_not_fatal() -> None:
    cfg = GPSConfig(env_id=ENV, iterations=1, samples=4, seed=0, init_gain=-1.0,
                    env_kwargs={"step_scale": 50.0}, **{**TINY, "s_steps": 3})
    trainer = GPSTrainer(cfg)
    data = trainer.sample(torch.Generator().manual_seed(0))
    assert bool(data["diverged"].all())
    for key in ("states", "obs", "costs"):
        assert bool(torch.isfinite(data[key]).all())
    before = {k: v.clone() for k, v in trainer.checkpoint()["psi"].items()}
    with pytest.warns(RuntimeWarning, match="4 of 4 rollouts diverged"):
        record = trainer.step()
    assert record["psi_diverged"] == 4 and record["psi_skipped"] == 1
    assert math.isfinite(record["eta"]) and record["kl_psi_prev"] == 0.0
    for key, value in trainer.checkpoint()["psi"].items():  # nothing to fit: ψ kept
        assert torch.equal(value, before[key]), key


def test_diverged_rollouts_are_left_out_of_the_fits(monkeypatch) -> None:
    """A rollout that diverged is frozen at ±1e6-sanitized values; the dynamics, cost and
    S-step see only the rollouts that stayed finite."""
    import gps.trainer as trainer_module

    trainer = GPSTrainer(_config(1))
    real_sample, seen = trainer.sample, {}

    def one_diverged(gen, keep=None):
        data = real_sample(gen, keep)
        data["diverged"][1] = True
        for key in ("states", "costs", "grads"):
            data[key][1, 5:] = 1e6
        return data

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            seen[name] = args[0] if name != "taylor" else args[1]
            return fn(*args, **kwargs)
        monkeypatch.setattr(trainer_module, fn.__name__, wrapped)

    spy("dynamics", trainer_module.fit_dynamics)
    spy("taylor", trainer_module.fit_taylor_cost)
    monkeypatch.setattr(trainer, "sample", one_diverged)
    record = trainer.step()
    assert record["psi_diverged"] == 1 and record["psi_skipped"] == 0
    c = trainer.config.coords
    assert seen["dynamics"].shape[1] == 3 * c  # 3 of the 4 rollouts, pooled per group
    assert seen["taylor"].shape[1] == 3 * c
    assert float(seen["dynamics"].abs().max()) < 1e6
    assert float(seen["taylor"].abs().max()) < 1e6
    assert record["psi_final_cost"] < 1e6  # over the rollouts the fits used


def test_taylor_cost_improves_psi_where_the_state_fit_does_not() -> None:
    """ψ alone (π decoupled: ν ≈ 0) on a small MLP: the Taylor cost learns to step against
    the gradient within 3 iterations; §3.4's state-only cost fit does not move ψ's cost."""
    def psi_costs(cost: str) -> list[float]:
        cfg = GPSConfig(env_id="optenv/MLP-Digits-v0", iterations=3, samples=4, seed=3,
                        cost=cost, nu0=1e-9, nu_kl_target=1e12, horizon=20, hidden=8,
                        s_steps=1, coords=32)
        trainer = GPSTrainer(cfg)
        return [trainer.step()["psi_final_cost"] for _ in range(3)]

    taylor, fit, log = psi_costs("taylor"), psi_costs("fit"), psi_costs("taylor-log")
    assert taylor[0] == pytest.approx(fit[0]) == pytest.approx(log[0])  # same start, samples
    assert taylor[-1] < 0.5 * taylor[0]
    assert taylor[-1] < 0.5 * fit[-1]
    assert log[-1] < 0.5 * log[0]  # the Taylor cost on log f learns the same direction
    with pytest.raises(ValueError, match="cost must be"):
        GPSConfig(cost="nope")


def test_final_policy_is_the_best_evaluated_pi() -> None:
    cfg = _config(3)
    trainer = GPSTrainer(cfg)
    records = [trainer.step() for _ in range(3)]
    best = min(r["pi_final_cost"] for r in records)
    assert trainer.best_cost == pytest.approx(best)
    assert records[-1]["pi_best_cost"] == pytest.approx(best)
    family, _ = task_for(ENV)
    ev = rollout(trainer.final_policy(), family, trainer.T, seeds=list(cfg.eval_seeds))
    assert float(ev.final.mean()) == pytest.approx(best, rel=1e-5)
    last = GPSTrainer(GPSConfig(**{**asdict(cfg), "keep": "last"}))
    assert last.final_policy() is last.policy


def test_agent_from_a_stopped_runs_checkpoint(full_run: Path) -> None:
    from gps.agent import GPSAgent

    trainer = GPSTrainer(_config(2), out=full_run, resume=True)
    family, _ = task_for(ENV)
    for keep, expected in (("best", trainer.final_policy()), ("last", trainer.policy)):
        agent = GPSAgent.from_checkpoint(full_run / "checkpoint.pt", keep=keep)
        got = rollout(agent.policy(), family, 5, seeds=[0, 1]).x
        torch.testing.assert_close(got, rollout(expected, family, 5, seeds=[0, 1]).x)
    # its training cost is the run's up to the checkpoint: 2 × (4 rollouts + 2 evals) × 15
    assert agent.training_cost["env_steps"] == 2 * (4 * 15 + 2 * 15)
    assert agent.training_cost["wall_s"] > 0
    with pytest.raises(ValueError, match="keep must be"):
        GPSAgent.from_checkpoint(full_run / "checkpoint.pt", keep="middle")


def test_a_failed_psi_update_keeps_psi_and_the_run_going(monkeypatch) -> None:
    """An LQGError in one iteration (no η makes Q_uu PD for those fits) skips that
    iteration's ψ-update with a warning instead of ending a long run."""
    import gps.trainer as trainer_module
    from gps.lqg import LQGError

    trainer = GPSTrainer(_config(2))
    real = trainer_module.psi_update
    before = {k: v.clone() for k, v in trainer.checkpoint()["psi"].items()}

    def failing(*args, **kwargs):
        raise LQGError("Q_uu is not positive definite even at eta_max")

    monkeypatch.setattr(trainer_module, "psi_update", failing)
    with pytest.warns(RuntimeWarning, match="ψ-update skipped"):
        record = trainer.step()
    assert record["psi_skipped"] == 1 and record["kl_psi_prev"] == 0.0
    assert all(math.isfinite(float(record[k])) for k in METRIC_KEYS if k != "s_step_loss")
    for key, value in trainer.checkpoint()["psi"].items():
        assert torch.equal(value, before[key]), key
    monkeypatch.setattr(trainer_module, "psi_update", real)
    assert trainer.step()["psi_skipped"] == 0  # the next iteration updates again


def test_scale_free_features_and_median_selection(tmp_path: Path) -> None:
    """``grad_scale`` reaches ψ's env and π (and survives save/load); ``eval_stat="median"``
    makes "best" the π with the lowest median final objective over ``eval_seeds``."""
    seeds = [10_000, 10_001, 10_002]
    cfg = GPSConfig(env_id=ENV, iterations=2, samples=4, seed=3, grad_scale="instance_rms",
                    eval_stat="median", eval_seeds=seeds, **TINY)
    trainer = GPSTrainer(cfg, out=tmp_path)
    assert trainer.env.loop.state_features.grad_scale == "paper"  # ψ's Φ: its own option
    both = GPSTrainer(GPSConfig(**{**asdict(cfg), "state_grad_scale": "instance_rms"}))
    assert both.env.loop.state_features.grad_scale == "instance_rms"
    ada = GPSTrainer(GPSConfig(**{**asdict(cfg), "grad_scale": "adagrad",
                                  "state_grad_scale": "adagrad"}))
    assert ada.env.loop.state_features.grad_scale == ada.env.loop.features.grad_scale == "adagrad"
    assert ada.policy.make_features().grad_scale == "adagrad"
    assert trainer.env.loop.features.grad_scale == "instance_rms"
    assert trainer.policy.feature_kwargs == {"grad_scale": "instance_rms"}
    trainer.run()
    records = _lines(tmp_path / "metrics.jsonl")
    assert trainer.best_cost == pytest.approx(min(r["pi_eval_cost"] for r in records))
    family, _ = task_for(ENV)
    ev = rollout(trainer.final_policy(), family, trainer.T, seeds=seeds)
    assert float(ev.final.median()) == pytest.approx(trainer.best_cost, rel=1e-5)
    saved = GPSAgent.from_checkpoint(tmp_path / "checkpoint.pt").save(tmp_path / "agent.pt")
    loaded = load_agent(saved).policy()
    assert loaded.feature_kwargs == {"grad_scale": "instance_rms"}
    assert loaded.make_features().grad_scale == "instance_rms"
    with pytest.raises(ValueError, match="grad_scale must be one of"):
        GPSConfig(grad_scale="rms")
    with pytest.raises(ValueError, match="state_grad_scale must be one of"):
        GPSConfig(state_grad_scale="rms")
    logged = GPSTrainer(GPSConfig(**{**asdict(cfg), "eval_stat": "log_mean", "iterations": 1}))
    record = logged.step()
    ev = rollout(logged.policy, family, logged.T, seeds=seeds).final.double()
    assert record["pi_eval_cost"] == pytest.approx(float(ev.clamp_min(1e-45).log10().mean()),
                                                   rel=1e-5)
    with pytest.raises(ValueError, match="eval_stat must be"):
        GPSConfig(eval_stat="max")


def test_pi_reading_phi_with_a_linear_path(tmp_path: Path) -> None:
    """``pi_features``/``pi_skip`` reach the env (π's observations are Φ), π, the S-step
    data and the saved agent, which runs in the bench's rollout."""
    cfg = GPSConfig(env_id=ENV, iterations=1, samples=4, seed=5, grad_scale="adagrad",
                    state_grad_scale="adagrad", pi_features="li_malik_state", pi_skip=True,
                    **TINY)
    trainer = GPSTrainer(cfg, out=tmp_path)
    assert trainer.env.loop.features.name == "li_malik_state"
    assert trainer.env.loop.features.grad_scale == "adagrad"
    assert (trainer.policy.features, trainer.policy.skip) == ("li_malik_state", True)
    data = trainer.sample(torch.Generator().manual_seed(0))
    assert data["obs"].shape[-1] == 75
    # π's observations are Φ: the state without x (column 0)
    torch.testing.assert_close(data["obs"], data["states"][..., 1:].float())
    skip_before = trainer.policy.skips[0].weight.detach().clone()
    record = trainer.step()
    assert math.isfinite(record["pi_eval_cost"]) and math.isfinite(record["kl_psi_pi"])
    assert not torch.equal(trainer.policy.skips[0].weight, skip_before)  # the S-step fits it
    saved = GPSAgent.from_checkpoint(tmp_path / "checkpoint.pt").save(tmp_path / "agent.pt")
    loaded = load_agent(saved).policy()
    assert (loaded.features, loaded.skip, loaded.input_dim) == ("li_malik_state", True, 75)
    family, _ = task_for(ENV)
    assert bool(torch.isfinite(rollout(loaded, family, 15, seeds=[0, 1]).objective).all())
    with pytest.raises(ValueError, match="pi_features must be one of"):
        GPSConfig(pi_features="gradient")
    with pytest.raises(ValueError, match="pi_skip must be a bool"):
        GPSConfig(pi_skip="yes")


def test_step_scale_is_the_envs_registered_or_given_one() -> None:
    env_id = optenv.register_optimizee("QuadSmallStep", "quadratic", horizon=15, dim=4,
                                       step_scale=0.03, namespace="optenv-t")
    registered = GPSTrainer(GPSConfig(env_id=env_id, iterations=1, samples=2, **TINY))
    assert registered.step_scale == registered.policy.step_scale == 0.03
    given = GPSTrainer(GPSConfig(env_id=ENV, iterations=1, samples=2,
                                 env_kwargs={"step_scale": 0.2}, **TINY))
    assert given.step_scale == given.policy.step_scale == 0.2
    assert GPSTrainer(_config(1)).step_scale == 0.1  # the envs' default


def test_resume_refuses_a_changed_configuration(full_run: Path) -> None:
    with pytest.raises(ValueError, match=r"configured with epsilon=1\.0; now epsilon=2\.0 "
                                         r"\(only iterations may change"):
        GPSTrainer(GPSConfig(**{**asdict(_config(2)), "epsilon": 2.0}), out=full_run,
                   resume=True)
    longer = GPSTrainer(_config(5), out=full_run, resume=True)  # more iterations: fine
    assert longer.iteration == 2


def test_dual_search_warnings_are_counted_in_the_metrics(monkeypatch) -> None:
    import warnings

    import gps.trainer as trainer_module

    trainer, real = GPSTrainer(_config(1)), trainer_module.psi_update

    def warning(*args, **kwargs):
        warnings.warn("KL > epsilon even at eta_max", stacklevel=2)
        warnings.warn("KL > epsilon even at eta_max", stacklevel=2)  # counted each time
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "psi_update", warning)
    assert trainer.step()["psi_warnings"] == 2
    monkeypatch.setattr(trainer_module, "psi_update", real)
    assert trainer.step()["psi_warnings"] == 0


def test_initial_controller_policy_is_psi0s_mean(tmp_path: Path) -> None:
    """gps.policy.InitialControllerPolicy steps as ψ₀'s mean, clipped as the env clips."""
    cfg = GPSConfig(env_id=ENV, iterations=1, samples=3, seed=1, init_gain=2.0,
                    grad_scale="adagrad", state_grad_scale="adagrad", **TINY)
    trainer = GPSTrainer(cfg)
    states = trainer.sample(torch.Generator().manual_seed(0))["states"]  # (M, T+1, n', 76)
    psi = trainer.psi
    mean = (torch.einsum("gtd,mtnd->mtn", psi.K[:, :, 0], states[:, :-1])
            + psi.k[0, None, :, 0, None])
    pol = InitialControllerPolicy(gain=2.0, step_scale=trainer.step_scale, grad_scale="adagrad")
    assert pol.make_features().name == "li_malik_state"
    assert pol.make_features().grad_scale == "adagrad"
    step, _ = pol.step(states[:, :-1, :, 1:].reshape(-1, states.shape[2], 75).float(), {})
    torch.testing.assert_close(step.double().reshape(mean.shape),
                               trainer.step_scale * mean.clamp(-1, 1), rtol=1e-5, atol=1e-7)
    family, _ = task_for(ENV)
    assert bool(torch.isfinite(rollout(pol, family, 15, seeds=[0, 1]).objective).all())
    with pytest.raises(ValueError, match="gain must be finite and > 0"):
        InitialControllerPolicy(gain=0.0)
    with pytest.raises(ValueError, match="gain must be finite and > 0"):
        InitialControllerPolicy(gain=[1.0, math.nan], block=2)
    with pytest.raises(ValueError, match="a gain schedule needs block"):
        InitialControllerPolicy(gain=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"features must be Φ \(li_malik_state\), \(B, n, 75\); "
                                         r"got \(2, 4, 3\)"):
        pol.step(torch.zeros(2, 4, 3), {})


def test_save_policies_writes_each_iterations_pi_as_an_agent(tmp_path: Path) -> None:
    from gps.trainer import POLICY_FILE

    cfg = GPSConfig(**{**asdict(_config(2)), "save_policies": True})
    trainer = GPSTrainer(cfg, out=tmp_path)
    family, _ = task_for(ENV)
    expected = []
    for _ in range(2):
        trainer.step()
        expected.append(rollout(trainer.policy, family, 5, seeds=[0, 1]).x)
    files = sorted((tmp_path / "policies").glob("iteration_*.pt"))
    assert [f.name for f in files] == ["iteration_0001.pt", "iteration_0002.pt"]
    assert files[0] == tmp_path / POLICY_FILE.format(1)
    for i, (path, x) in enumerate(zip(files, expected, strict=True), start=1):
        agent = load_agent(path)
        torch.testing.assert_close(rollout(agent.policy(), family, 5, seeds=[0, 1]).x, x)
        assert agent.hyperparams()["iterations"] == i
        assert agent.hyperparams()["save_policies"] is True
        # the training cost up to that iteration: i × (4 rollouts + 2 evals) × 15 steps
        assert agent.training_cost["env_steps"] == i * (4 * 15 + 2 * 15)
    # the two iterations' π differ (the files are not one π written twice)
    assert not torch.equal(expected[0], expected[1])
    with pytest.raises(ValueError, match="save_policies=True needs a run folder"):
        GPSTrainer(cfg)
    with pytest.raises(ValueError, match="save_policies must be a bool"):
        GPSConfig(env_id=ENV, save_policies="yes")


def test_evaluation_cost_statistics() -> None:
    from gps.trainer import evaluation_cost

    final = torch.tensor([0.0, 1e-50, 1e-3, 10.0], dtype=torch.float64)
    assert evaluation_cost(final, "mean") == pytest.approx((1e-3 + 10.0) / 4, rel=1e-12)
    assert evaluation_cost(final, "median") == 1e-50  # torch's median: the lower middle
    # underflowed and tiny losses count at the floor 1e-45: (-45 - 45 - 3 + 1) / 4
    assert evaluation_cost(final, "log_mean") == pytest.approx(-23.0, rel=1e-5)
    diverged = torch.tensor([1.0, math.inf])
    assert evaluation_cost(diverged, "mean") == math.inf
    assert evaluation_cost(diverged, "log_mean") == math.inf
    with pytest.raises(ValueError, match="stat must be one of"):
        evaluation_cost(final, "max")


def test_curvature_window_and_log_floor_reach_the_taylor_log_cost(monkeypatch) -> None:
    """``curvature_window`` fits h per block of steps (a (T,) curvature in the cost),
    ``log_floor`` is the f under which taylor-log stops counting (an underflowed f = 0
    costs log(floor), not log(1e-30))."""
    import gps.trainer as trainer_module

    cfg = GPSConfig(**{**asdict(_config(1)), "cost": "taylor-log", "curvature_window": 5,
                       "log_floor": 1e-6})
    trainer = GPSTrainer(cfg)
    real_sample, seen = trainer.sample, {}

    def underflows(gen, keep=None):
        data = real_sample(gen, keep)
        data["costs"][0, 8:] = 0.0  # rollout 0 "memorizes" from step 8
        seen["data"] = data
        return data

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            seen[name] = (args, kwargs, out)
            return out
        monkeypatch.setattr(trainer_module, fn.__name__, wrapped)

    spy("curvature", trainer_module.step_curvature)
    spy("taylor", trainer_module.fit_taylor_cost)
    monkeypatch.setattr(trainer, "sample", underflows)
    record = trainer.step()
    (df, _, _), kwargs, h = seen["curvature"]
    assert kwargs["window"] == 5 and h.shape == (15,)
    costs = seen["data"]["costs"]
    assert record["psi_log_cost"] == pytest.approx(
        float(costs[:, -1].clamp_min(1e-45).log10().mean()))
    assert float(df[0, 8:].abs().max()) == 0.0  # log(floor) − log(floor)
    assert float(df[0, 7]) == pytest.approx(math.log(1e-6) - math.log(float(costs[0, 7])))
    assert seen["taylor"][0][3] is h  # the per-step curvature goes to the cost
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="curvature_window must be a positive int"):
            GPSConfig(curvature_window=bad)
    for bad in (0.0, 1.0, -1e-3):
        with pytest.raises(ValueError, match="log_floor must be in"):
            GPSConfig(log_floor=bad)


def test_initial_controller_gain_schedule_switches_per_block() -> None:
    """A gain schedule is ψ₀'s rule with gain_t = gains[t // block]: its first block runs
    as the constant first gain, the next as the second, the last held after."""
    family, _ = task_for(ENV)
    kw = {"step_scale": 0.5, "grad_scale": "adagrad"}
    sched = rollout(InitialControllerPolicy([1.0, 3.0], block=4, **kw), family, 10,
                    seeds=[0, 1]).objective
    const1 = rollout(InitialControllerPolicy(1.0, **kw), family, 10, seeds=[0, 1]).objective
    torch.testing.assert_close(sched[:, :5], const1[:, :5])  # f(x_0..x_4): steps 0-3
    assert not torch.allclose(sched[:, 5:], const1[:, 5:])
    same = rollout(InitialControllerPolicy([2.0, 2.0], block=3, **kw), family, 10,
                   seeds=[0, 1]).objective
    const2 = rollout(InitialControllerPolicy(2.0, **kw), family, 10, seeds=[0, 1]).objective
    torch.testing.assert_close(same, const2)
    pol = InitialControllerPolicy([1.0, 3.0, 0.5], block=2, **kw)
    phi = torch.full((1, 2, 75), 0.1)
    steps = []
    state = pol.reset(2, (), 1)
    for _ in range(8):
        step, state = pol.step(phi, state)
        steps.append(round(float(step[0, 0]), 6))
    assert state == {"t": 8}
    assert steps == [-0.05, -0.05, -0.15, -0.15, -0.025, -0.025, -0.025, -0.025]


def test_noise_correlation_shares_exploration_within_a_group() -> None:
    """ρ = 1: one draw for a group's coordinates; ρ = 0.5: correlation ½, variance kept."""
    def actions(rho: float) -> torch.Tensor:
        cfg = GPSConfig(env_id=ENV, iterations=1, samples=8, seed=3, init_gain=0.0,
                        init_var=1e-4, noise_correlation=rho, **TINY)
        trainer = GPSTrainer(cfg)
        assert trainer.G == 1
        return trainer.sample(torch.Generator().manual_seed(0))["actions"]  # (M, T, n)

    shared = actions(1.0)
    assert torch.allclose(shared, shared[..., :1].expand_as(shared), atol=1e-7)
    half = actions(0.5).flatten(0, 1)  # (M·T, n)
    var = half.var(0).mean()
    assert abs(float(var) / 1e-4 - 1.0) < 0.15, float(var)
    corr = torch.corrcoef(half.T)
    off = corr[~torch.eye(corr.shape[0], dtype=torch.bool)].mean()
    assert abs(float(off) - 0.5) < 0.1, float(off)
    independent = actions(0.0).flatten(0, 1)
    corr0 = torch.corrcoef(independent.T)
    assert abs(float(corr0[~torch.eye(corr0.shape[0], dtype=torch.bool)].mean())) < 0.05


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "0.5"])
def test_noise_correlation_validated(bad: object) -> None:
    with pytest.raises(ValueError, match=r"noise_correlation must be in \[0, 1\], got "):
        GPSConfig(env_id=ENV, noise_correlation=bad)  # type: ignore[arg-type]


def _pi2_config(**kw) -> GPSConfig:
    return GPSConfig(env_id=ENV, iterations=1, samples=16, seed=3, horizon=15, hidden=8,
                     s_steps=10, psi_update="pi2-gain", pi2_block=5, pi2_sigma=0.05,
                     init_gain=0.05, **kw)


def test_pi2_gain_moves_only_the_gradient_gain_per_block_as_gps_pi2_says() -> None:
    from gps.pi2 import costs_to_go, pi2_update
    from gps.trainer import GRAD_COLUMN, LOG_FLOOR

    cfg = _pi2_config()
    # the samples step() draws first: same generator, same trainer state
    probe = GPSTrainer(cfg)
    data = probe.draw(torch.Generator().manual_seed(3 * 1_000_003)).data
    assert data["gain_noise"].shape == (16, 3)
    assert bool((data["diverged_at"] == 16).all())  # none diverged: T + 1
    S = costs_to_go(data["costs"].clamp_min(LOG_FLOOR).log10(), 5, 15)
    delta, kl = pi2_update(data["gain_noise"], S, 0.05, cfg.pi2_kl)
    trainer = GPSTrainer(cfg)
    psi0 = trainer.psi
    record = trainer.step()
    K = trainer.psi.K
    assert torch.allclose(K[0, :, 0, GRAD_COLUMN], -0.05 + delta.repeat_interleave(5))
    others = torch.ones(K.shape[-1], dtype=torch.bool)
    others[GRAD_COLUMN] = False
    assert torch.equal(K[..., others], psi0.K[..., others])
    assert torch.equal(trainer.psi.k, psi0.k) and torch.equal(trainer.psi.cov, psi0.cov)
    assert record["kl_psi_prev"] == pytest.approx(float(kl.mean()))
    assert math.isfinite(record["pi_eval_cost"]) and record["psi_skipped"] == 0
    # more BADMM rounds repeat the S-step on the same ψ: the PI² update is made once
    twice = GPSTrainer(_pi2_config(badmm_iters=2))
    twice.step()
    assert torch.equal(twice.psi.K, trainer.psi.K)


def test_pi2_gain_raises_a_timid_gain_and_lowers_the_cost() -> None:
    """On the quadratics a gain of 0.05 is too small: six updates raise it, ψ's log f falls."""
    from gps.trainer import GRAD_COLUMN

    trainer = GPSTrainer(_pi2_config())
    first = trainer.step()["psi_log_cost"]
    for _ in range(5):
        last = trainer.step()["psi_log_cost"]
    gains = -trainer.psi.K[0, ::5, 0, GRAD_COLUMN]
    assert bool((gains > 0.075).all()), gains
    assert last < first - 0.1, (first, last)


@pytest.mark.parametrize(("field", "bad", "message"), [
    ("psi_update", "ilqr", "psi_update must be one of"),
    ("pi2_block", 0, "pi2_block must be a positive int, got 0"),
    ("pi2_sigma", -0.1, "pi2_sigma must be a finite number > 0, got -0.1"),
    ("pi2_kl", math.inf, "pi2_kl must be a finite number > 0, got inf"),
])
def test_pi2_options_validated(field: str, bad: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GPSConfig(env_id=ENV, **{field: bad})


def test_pi_time_gives_pi_the_step_over_the_horizon() -> None:
    cfg = GPSConfig(env_id=ENV, iterations=1, samples=4, seed=0, horizon=6, hidden=4,
                    s_steps=2, coords=4, pi_time=True)
    trainer = GPSTrainer(cfg)
    assert trainer.policy.time_scale == 6.0
    record = trainer.step()
    assert math.isfinite(record["pi_eval_cost"])
    assert trainer.policy_agent().policy().time_scale == 6.0  # the agent file keeps it
    assert GPSTrainer(GPSConfig(env_id=ENV, horizon=6)).policy.time_scale is None
    with pytest.raises(ValueError, match="pi_time must be a bool, got 1"):
        GPSConfig(env_id=ENV, pi_time=1)  # type: ignore[arg-type]
    headed = GPSTrainer(GPSConfig(env_id=ENV, horizon=6, hidden=4, pi_skip=True,
                                  pi_gain_head=True))
    assert headed.policy.gain_head and headed.policy_agent().policy().gain_head
    with pytest.raises(ValueError, match="pi_gain_head=True needs pi_skip=True"):
        GPSConfig(env_id=ENV, pi_gain_head=True)


def test_s_block_norm_weighs_each_block_by_its_own_action_scale() -> None:
    trainer = GPSTrainer(GPSConfig(env_id=ENV, horizon=6, hidden=4, s_block_norm=4))
    # one group, two samples; steps 0-3 act at ±1 (mean square 1), steps 4-5 at ±0.1 (0.01)
    target = torch.tensor([[1.0, -1, 1, -1, 0.1, -0.1], [-1, 1, -1, 1, -0.1, 0.1]],
                          dtype=torch.float64)[None]
    overall = (4 * 1.0 + 2 * 0.01) / 6
    w = trainer.loss_weights(target)
    assert torch.allclose(w, torch.tensor([[overall] * 4 + [overall / 0.01] * 2],
                                          dtype=torch.float64))
    # weighted, both blocks' squared errors relative to their scale count alike
    assert torch.allclose((w * target.square().mean(1))[0, :4].mean(),
                          (w * target.square().mean(1))[0, 4:].mean())
    # a block where ψ acts exactly 0 keeps weight 1; without the option every weight is 1
    target[..., 4:] = 0.0
    assert torch.equal(trainer.loss_weights(target)[0, 4:], torch.ones(2, dtype=torch.float64))
    plain = GPSTrainer(GPSConfig(env_id=ENV, horizon=6, hidden=4))
    assert torch.equal(plain.loss_weights(target), torch.ones(1, 6, dtype=torch.float64))
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=f"s_block_norm must be a positive int or None, "
                                             f"got {bad!r}"):
            GPSConfig(env_id=ENV, s_block_norm=bad)  # type: ignore[arg-type]


def test_s_block_norm_reaches_the_s_step_as_precision_weights(monkeypatch) -> None:
    import gps.trainer as trainer_module

    seen = {}

    def spy(policy, obs, tgt, prec, lam, nu, **kw):
        seen["prec"], seen["tgt"] = prec, tgt
        return [0.0]

    monkeypatch.setattr(trainer_module, "s_step", spy)
    cfg = GPSConfig(env_id=ENV, iterations=1, samples=4, seed=0, horizon=6, hidden=4,
                    coords=4, s_block_norm=3, init_var=0.5)
    trainer = GPSTrainer(cfg)
    pool = trainer.draw(torch.Generator().manual_seed(0)).pool
    target, losses = trainer.fit_policy(trainer.psi, pool, torch.Generator().manual_seed(1))
    assert losses == [0.0] and target.shape == (1, 16, 6)
    w = trainer.loss_weights(target)[0]
    assert torch.allclose(seen["prec"][0].double(), w / 0.5, rtol=1e-6)
    # ψ's targets reach π as (rollout, step, coordinate)
    assert torch.equal(seen["tgt"][0], target[0].reshape(4, 4, 6).permute(0, 2, 1).float())
