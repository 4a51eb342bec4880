"""The benchmark scripts (benchmarks/) on a few small problems."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

from agents.baselines import AdamPolicy, SGDPolicy
from agents.metz import evaluate
from optenv.policy import make_problem, rollout
from optenv.problems.quadratic import QuadraticFamily
from optenv.registry import load_agent, pretrained_path, task_for
from optenv.tuning import tune_grid

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(monkeypatch, *argv: str, script: str = "quadratic_reference.py") -> None:
    path = BENCHMARKS / script
    monkeypatch.setattr(sys, "argv", [str(path), *argv])
    runpy.run_path(str(path), run_name="__main__")


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


def test_evaluation_problems_may_not_overlap_the_tuning_problems(monkeypatch, capsys,
                                                                 tmp_path):
    with pytest.raises(SystemExit):
        run(monkeypatch, "--problems", "6", "--train-problems", "10", "--first-seed", "5")
    assert "--first-seed must be >= --train-problems (10)" in capsys.readouterr().err
    missing = str(tmp_path / "none.pt")
    for argv, message in ((["--problems", "0"], "--problems and --train-problems must be"),
                          (["--agent", missing], f"--agent {missing!r}: no saved agent")):
        with pytest.raises(SystemExit):
            run(monkeypatch, *argv)
        assert message in capsys.readouterr().err


def test_metz_heldout_counts_wins_against_both_tuned_adams(monkeypatch, tmp_path):
    out = tmp_path / "heldout.json"
    kwargs = '{"dim": 3}'
    run(monkeypatch, "cnn=metz-cnn", "again=metz-cnn", "--tasks", "3", "--env",
        "optenv/Quadratic-v0", "--env-kwargs", kwargs, "--json", str(out),
        script="metz_heldout.py")
    report = json.loads(out.read_text())
    rows = {r["agent"]: r for r in report["rows"]}
    family, horizon = task_for("optenv/Quadratic-v0", dim=3)
    seeds = [1000, 1001, 1002]
    assert report["seeds"] == seeds and report["steps"] == horizon
    # the family-tuned Adam is tune_grid's pick on training seeds 0-2, run on the tasks
    lr = tune_grid(AdamPolicy, family, horizon, seeds=(0, 1, 2)).best
    fam = rows["adam (tuned on the family)"]
    assert fam["lr"] == lr
    torch.testing.assert_close(torch.tensor(fam["final"]),
                               evaluate(AdamPolicy(lr=lr), family, seeds, horizon))
    # per-task Adam is at least as good as family Adam on every task (same grid, oracle)
    task = torch.tensor(rows["adam (tuned per task)"]["final"])
    assert bool((task <= torch.tensor(fam["final"]) * (1 + 1e-5)).all())
    mine = torch.tensor(rows["cnn"]["final"])
    assert rows["cnn"]["wins_vs_task"] == int((mine < task * (1 - 1e-5)).sum())
    assert rows["cnn"]["wins_vs_family"] == int(
        (mine < torch.tensor(fam["final"]) * (1 - 1e-5)).sum())
    assert rows["again"]["final"] == pytest.approx(rows["cnn"]["final"], rel=1e-6)


def test_metz_heldout_names_a_malformed_agent(monkeypatch, capsys, tmp_path):
    with pytest.raises(SystemExit):
        run(monkeypatch, "metz-cnn", script="metz_heldout.py")
    assert "expected LABEL=AGENT" in capsys.readouterr().err
    missing = str(tmp_path / "none.pt")
    for argv, message in (([f"a={missing}"], f"agent 'a={missing}': no saved agent"),
                          (["a=metz-cnn", "--env", "optenv/Nope-v0"], "--env 'optenv/Nope-v0'")):
        with pytest.raises(SystemExit):
            run(monkeypatch, *argv, script="metz_heldout.py")
        assert message in capsys.readouterr().err
    for bad in ("[1, 2]", "{dim: 3"):
        with pytest.raises(SystemExit):
            run(monkeypatch, "a=metz-cnn", "--env-kwargs", bad, script="metz_heldout.py")
        err = capsys.readouterr().err
        assert "expected a JSON object" in err and repr(bad) in err


def _bounded_report(monkeypatch, tmp_path, bound: str) -> dict:
    out = tmp_path / f"bounded_{bound}.json"
    run(monkeypatch, "--env", "optenv/Quadratic-v0", "--env-kwargs", '{"dim": 3}', "--bound",
        bound, "--agents", "sgd", "adagrad", "--learned", "l2l-quadratic", "--seeds", "3",
        "--steps", "20", "--json", str(out), script="bounded_baselines.py")
    return json.loads(out.read_text())


def test_bounded_baselines_tune_with_the_clip_inside_the_rule(monkeypatch, tmp_path):
    report = _bounded_report(monkeypatch, tmp_path, "0.05")
    assert report["bound"] == 0.05 and report["seeds"] == [1000, 1001, 1002]
    rows = {(r["agent"], r["which"]): r for r in report["rows"]}
    assert set(rows) == {(a, w) for a in ("sgd", "adagrad", "l2l-quadratic")
                         for w in ("free", "bounded")}
    family, _ = task_for("optenv/Quadratic-v0", dim=3)

    def clipped(lr):  # SGD whose step is clipped coordinatewise, written out here
        class Clipped(SGDPolicy):
            def step(self, features, state):
                delta, state = super().step(features, state)
                return delta.clamp(-0.05, 0.05), state
        return Clipped(lr=lr)

    for which, make in (("free", SGDPolicy), ("bounded", clipped)):
        tuned = tune_grid(make, family, 20, seeds=(0, 1, 2))
        final = rollout(make(tuned.best), family, 20, seeds=[1000, 1001, 1002]).final
        assert rows["sgd", which]["lr"] == tuned.best
        assert rows["sgd", which]["final"] == pytest.approx(final.tolist(), rel=1e-6)
    # the clip binds here: tuned free SGD takes steps above 0.05, and its result changes
    assert rows["sgd", "bounded"]["final"] != pytest.approx(rows["sgd", "free"]["final"])


def test_bounded_baselines_equal_free_ones_when_the_bound_never_binds(monkeypatch, tmp_path):
    report = _bounded_report(monkeypatch, tmp_path, "1e9")
    rows = {(r["agent"], r["which"]): r for r in report["rows"]}
    for agent in ("sgd", "adagrad", "l2l-quadratic"):
        assert rows[agent, "bounded"]["final"] == rows[agent, "free"]["final"]
        assert rows[agent, "bounded"]["lr"] == rows[agent, "free"]["lr"]


def test_bounded_baselines_default_bound_is_the_envs_registered_step_scale(monkeypatch,
                                                                             tmp_path):
    import optenv

    env_id = optenv.register_optimizee("QuadBound", "quadratic", horizon=20, dim=3,
                                       step_scale=0.05, namespace="optenv-t")
    out = tmp_path / "bound.json"
    run(monkeypatch, "--env", env_id, "--agents", "sgd", "--seeds", "2", "--json", str(out),
        script="bounded_baselines.py")
    assert json.loads(out.read_text())["bound"] == 0.05
    run(monkeypatch, "--env", env_id, "--env-kwargs", '{"step_scale": 0.2}', "--agents", "sgd",
        "--seeds", "2", "--json", str(out), script="bounded_baselines.py")
    assert json.loads(out.read_text())["bound"] == 0.2


def test_bounded_baselines_name_bad_arguments(monkeypatch, capsys, tmp_path):
    for argv, message in ((["--agents", "gps-psd"], "--agents takes baselines"),
                          (["--bound", "0"], "--bound must be > 0, got 0.0"),
                          (["--seeds", "0"], "--seeds must be >= 1, got 0"),
                          (["--steps", "0"], "--steps must be >= 1, got 0"),
                          (["--env", "optenv/Nope-v0"], "--env 'optenv/Nope-v0'"),
                          (["--env", "optenv/Quadratic-v0", "--env-kwargs", '{"dimm": 3}'],
                           "--env 'optenv/Quadratic-v0' with --env-kwargs"),
                          (["--learned", str(tmp_path / "none.pt")], "--learned '")):
        with pytest.raises(SystemExit):
            run(monkeypatch, *argv, script="bounded_baselines.py")
        assert message in capsys.readouterr().err


def test_gps_scale_times_every_phase_at_both_widths(monkeypatch, tmp_path):
    out = tmp_path / "scale.json"
    run(monkeypatch, "--iterations", "1", "--horizon", "4", "--samples", "2", "--hidden", "4",
        "--json", str(out), script="gps_scale.py")
    rows = json.loads(out.read_text())["rows"]
    assert {env: r["params"] for env, r in rows.items()} == {
        "optenv/MLP-Digits-v0": 2842, "optenv/MLP-Digits-Wide-v0": 22210}
    for r in rows.values():
        assert r["groups"] == 4
        phases = [r[p] for p in ("sample", "dynamics", "cost", "lqg", "s_step", "eval")]
        assert all(t > 0 for t in phases) and r["total"] >= sum(phases)


def test_gps_initial_controller_rolls_out_psi0s_mean(monkeypatch, tmp_path, capsys):
    from gps.policy import InitialControllerPolicy

    out = tmp_path / "psi0.json"
    run(monkeypatch, "--env", "optenv/Quadratic-v0", "--env-kwargs", '{"step_scale": 0.5}',
        "--grad-scale", "adagrad", "--gains", "0.5", "1", "--seeds", "3", "--first-seed", "7",
        "--steps", "12", "--schedules", "1,0.5", "--block", "5", "--json", str(out),
        script="gps_initial_controller.py")
    report = json.loads(out.read_text())
    assert report["step_scale"] == 0.5 and report["seeds"] == [7, 8, 9]
    family, _ = task_for("optenv/Quadratic-v0")
    for row, gain in zip(report["rows"], (0.5, 1.0, [1.0, 0.5]), strict=True):
        pol = InitialControllerPolicy(gain, 0.5, "adagrad", block=5)
        final = rollout(pol, family, 12, seeds=[7, 8, 9]).final
        assert row["gain"] == gain and row["final"] == pytest.approx(final.tolist(), rel=1e-6)
        assert row["diverged"] == [False] * 3
    printed = capsys.readouterr().out
    assert "gain 0.5 (lr 0.25): median" in printed
    assert "gains 1,0.5 per 5 steps: median" in printed
    for bad, named in ((("--gains", "0"), "gains (--gains, --schedules) must be > 0, got [0.0]"),
                       (("--schedules", "1,-2"), "must be > 0, got [-2.0]"),
                       (("--first-seed", "-1"), "--first-seed: expected an integer >= 0, got '-1'"),
                       (("--schedules", "1,x"), "'1,x' is not a comma list of gains"),
                       (("--block", "0"), "--block: expected a positive integer, got '0'")):
        with pytest.raises(SystemExit):
            run(monkeypatch, *bad, script="gps_initial_controller.py")
        assert named in capsys.readouterr().err


def test_gps_select_ranks_saved_policies_on_validation_seeds(monkeypatch, tmp_path, capsys):
    from gps.trainer import GPSConfig, GPSTrainer, evaluation_cost

    run_dir = tmp_path / "run"
    cfg = GPSConfig(env_id="optenv/Quadratic-v0", iterations=3, samples=4, seed=3, horizon=15,
                    hidden=8, s_steps=10, save_policies=True)
    GPSTrainer(cfg, out=run_dir).run()
    out = tmp_path / "select.json"
    run(monkeypatch, str(run_dir), "--seeds", "4", "--first-seed", "30", "--stat", "median",
        "--json", str(out), script="gps_select.py")
    report = json.loads(out.read_text())
    assert report["seeds"] == [30, 31, 32, 33]
    assert [r["iteration"] for r in report["rows"]] == [1, 2, 3]
    family, _ = task_for("optenv/Quadratic-v0")
    for row in report["rows"]:
        agent = load_agent(run_dir / "policies" / row["file"])
        final = rollout(agent.policy(), family, 15, seeds=[30, 31, 32, 33]).final
        assert row["final"] == pytest.approx(final.tolist(), rel=1e-6)
        assert row["median"] == pytest.approx(evaluation_cost(final, "median"), rel=1e-6)
        assert row["log_mean"] == pytest.approx(evaluation_cost(final, "log_mean"), rel=1e-6)
    best = min(report["rows"], key=lambda r: r["median"])
    assert report["selected"] == best["iteration"]
    assert (run_dir / "selected.pt").read_bytes() == \
        (run_dir / "policies" / best["file"]).read_bytes()
    assert f"selected iteration {best['iteration']} (median" in capsys.readouterr().out
    for bad, named in ((("--first-seed", "1010"), "overlap the bench's held-out seeds"),
                       (("--seeds", "0"), "--seeds: expected a positive integer, got '0'")):
        with pytest.raises(SystemExit):
            run(monkeypatch, str(run_dir), *bad, script="gps_select.py")
        assert named in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(monkeypatch, str(tmp_path), script="gps_select.py")
    assert "no saved policies" in capsys.readouterr().err


def test_gps_cost_probe_reports_the_fitted_costs_per_step_optimum(monkeypatch, tmp_path,
                                                                  capsys):
    from dataclasses import asdict

    from gps.trainer import GRAD_COLUMN, GPSConfig, GPSTrainer
    from gps.types import LinearGaussianController

    cfg = GPSConfig(env_id="optenv/Quadratic-v0", iterations=1, samples=4, seed=3, horizon=15,
                    hidden=8, cost="taylor-log", init_gain=0.5, init_var=1e-3)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(asdict(cfg)))
    out = tmp_path / "probe.json"
    run(monkeypatch, str(path), "--every", "5", "--delta", "0.2", "--sample-seed", "4",
        "--json", str(out), script="gps_cost_probe.py")
    report = json.loads(out.read_text())
    trainer = GPSTrainer(cfg)
    _, live, pool, fit_ok, _ = trainer.draw(torch.Generator().manual_seed(4))
    assert fit_ok
    cost = trainer.fit_cost(live, pool)
    ds = pool["states"].shape[-1]
    (row,) = report["rows"]
    assert row["steps"] == [0, 5, 10]
    gain = -cost.C[0, [0, 5, 10], GRAD_COLUMN, ds] / cost.C[0, [0, 5, 10], ds, ds]
    assert row["optimal_gain"] == pytest.approx(gain.tolist(), rel=1e-9)
    sq = pool["states"][0, :, [0, 5, 10], GRAD_COLUMN].square().mean(0)
    assert row["kl_of_delta"] == pytest.approx((0.04 * sq / 2e-3).tolist(), rel=1e-9)
    assert row["psi_gain"] == pytest.approx([-0.5] * 3)
    assert row["effective_gain"] == pytest.approx([-0.5] * 3)  # ψ₀'s step is its own multiple
    assert "ψ₀; trust region ε = 1 over 15 steps" in capsys.readouterr().out
    # a checkpoint's ψ: its own gains, and the same samples' cost fitted at that ψ
    GPSTrainer(GPSConfig(**{**asdict(cfg), "iterations": 2}), out=tmp_path / "run").run()
    ck = tmp_path / "run" / "checkpoint.pt"
    run(monkeypatch, str(path), "--checkpoint", str(ck), "--every", "5", "--json", str(out),
        script="gps_cost_probe.py")
    (row,) = json.loads(out.read_text())["rows"]
    psi_k = torch.load(ck, weights_only=True)["psi"]["K"][0, [0, 5, 10], 0, GRAD_COLUMN]
    assert row["psi_gain"] == pytest.approx(psi_k.tolist(), rel=1e-12)
    assert row["psi_gain"] != pytest.approx([-0.5] * 3)
    psi = torch.load(ck, weights_only=True)["psi"]
    trainer.psi = LinearGaussianController(**psi)  # the probe samples the checkpoint's ψ
    pool = trainer.draw(torch.Generator().manual_seed(0)).pool  # --sample-seed 0
    S = pool["states"][0, :, [0, 5, 10]]  # (N, 3, ds)
    mean = (S * psi["K"][0, [0, 5, 10], 0]).sum(-1) + psi["k"][0, [0, 5, 10], 0]
    base = -S[..., GRAD_COLUMN]
    assert row["effective_gain"] == pytest.approx(
        (-(mean * base).sum(0) / base.square().sum(0)).tolist(), rel=1e-9)
    assert f"ψ of {ck}" in capsys.readouterr().out
    path.write_text(json.dumps({**asdict(cfg), "epsilon": 2.0}))
    with pytest.raises(SystemExit):
        run(monkeypatch, str(path), "--checkpoint", str(ck), script="gps_cost_probe.py")
    assert "configured with epsilon=1.0; now epsilon=2.0" in capsys.readouterr().err
    for bad in ("0", "nan", "x"):
        with pytest.raises(SystemExit):
            run(monkeypatch, str(path), "--delta", bad, script="gps_cost_probe.py")
        assert f"--delta: expected a finite number > 0, got '{bad}'" in capsys.readouterr().err
    path.write_text(json.dumps({**asdict(cfg), "cost": "fit"}))
    with pytest.raises(SystemExit):
        run(monkeypatch, str(path), script="gps_cost_probe.py")
    assert "cost 'fit' has no action term to probe" in capsys.readouterr().err
    for bad_text, named in (("{", "not a readable GPS config.json"),
                            ("[1]", "expected a JSON object of GPSConfig fields"),
                            (json.dumps({**asdict(cfg), "epsilon": -1.0}),
                             "epsilon must be > 0, got -1.0")):
        path.write_text(bad_text)
        with pytest.raises(SystemExit):
            run(monkeypatch, str(path), script="gps_cost_probe.py")
        assert named in capsys.readouterr().err
    path.write_text(json.dumps(asdict(cfg)))
    with pytest.raises(SystemExit):
        run(monkeypatch, str(path), "--checkpoint", str(tmp_path / "none.pt"),
            script="gps_cost_probe.py")
    assert "not a readable checkpoint" in capsys.readouterr().err
    path.write_text(json.dumps({**asdict(cfg), "colour": 1}))
    with pytest.raises(SystemExit):
        run(monkeypatch, str(path), script="gps_cost_probe.py")
    assert "not GPSConfig fields: colour" in capsys.readouterr().err


def test_gps_policy_gain_recovers_a_linear_policys_gain_per_block(monkeypatch, tmp_path,
                                                                   capsys):
    """A π whose action is exactly −0.7·f (LSTM head zero, linear path on f): gain 0.7
    in every block, from the function and from an agent file through the script."""
    from gps.agent import GPSAgent
    from gps.policy import CoordinatewiseLSTMPolicy

    ns = runpy.run_path(str(BENCHMARKS / "gps_policy_gain.py"))
    pol = CoordinatewiseLSTMPolicy(hidden=4, share="all", features="li_malik_state",
                                   skip=True, step_scale=5.0)
    with torch.no_grad():
        for p in pol.heads.parameters():
            p.zero_()
        pol.skips[0].weight[0, 0] = -0.7
    gains = ns["block_gains"](pol, "optenv/MLP-Digits-v0", [20000, 20001], 6, 4)
    assert gains == pytest.approx([0.7, 0.7], rel=1e-6)
    assert pol.step.__func__ is CoordinatewiseLSTMPolicy.step  # the recorder is removed
    with pytest.raises(SystemExit, match="π reads 'li_malik_obs'"):
        ns["block_gains"](CoordinatewiseLSTMPolicy(hidden=4, share="all"),
                          "optenv/MLP-Digits-v0", [0], 2, 1)
    agent = GPSAgent.from_run_state({"hidden": 4, "pi_features": "li_malik_state",
                                     "pi_skip": True}, 1, pol.config(), pol.state_dict())
    path = tmp_path / "pi.pt"
    agent.save(path)
    out = tmp_path / "gains.json"
    run(monkeypatch, str(path), "--seeds", "2", "--steps", "6", "--block", "3", "--json",
        str(out), script="gps_policy_gain.py")
    (row,) = json.loads(out.read_text())["rows"]
    assert row["gains"] == pytest.approx([0.7, 0.7], rel=1e-6)
    assert "0.700, 0.700 (per 3 steps)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run(monkeypatch, str(tmp_path / "missing.pt"), script="gps_policy_gain.py")
    assert "missing.pt: not a readable agent file" in capsys.readouterr().err


def test_gps_distill_fits_pi_to_a_set_gain_schedule(monkeypatch, tmp_path, capsys):
    """ψ fixed at gains 1.0 then 0.3: the S-step alone gives π (time input, gain head,
    block-normalized loss) a falling schedule, which the saved agent reproduces."""
    out, agent = tmp_path / "distill.json", tmp_path / "pi.pt"
    sets = ["horizon=20", "pi2_block=10", "samples=8", "coords=16", "s_steps=150",
            "s_lr=0.01", "hidden=8", "pi_features=li_malik_state", "pi_skip=true",
            "pi_gain_head=true", "pi_time=true", "s_block_norm=10"]
    run(monkeypatch, "--env", "optenv/Quadratic-v0", "--schedule", "1.0,0.3", "--seeds", "4",
        *[a for s in sets for a in ("--set", s)], "--save", str(agent), "--json", str(out),
        script="gps_distill.py")
    report = json.loads(out.read_text())
    gains = report["pi_gains"]
    assert report["schedule"] == [1.0, 0.3] and report["config"]["s_block_norm"] == 10
    assert gains[0] > gains[1] + 0.2, gains  # untrained: no schedule (test_policy's zero start)
    fitted = report["pi_gains_at_psi_states"]
    assert fitted[0] > fitted[1] + 0.2, fitted
    assert "ψ's schedule: 1.000, 0.300" in capsys.readouterr().out
    ns = runpy.run_path(str(BENCHMARKS / "gps_policy_gain.py"))
    again = ns["block_gains"](load_agent(agent).policy(), "optenv/Quadratic-v0",
                              list(range(20000, 20004)), 20, 10)
    assert again == pytest.approx(gains, rel=1e-6)
    for argv, message in ((["--schedule", "1,x"], "is not a comma list of gains"),
                          (["--schedule", "1,1,1"], "--schedule has 3 gains; 20 steps in "
                                                    "blocks of 10 need 2"),
                          (["--schedule", "1", "--set", "colour=1"], "colour")):
        with pytest.raises(SystemExit):
            run(monkeypatch, *argv, "--env", "optenv/Quadratic-v0", "--set", "horizon=20",
                "--set", "pi2_block=10" if "1,1,1" in argv else "pi2_block=20",
                script="gps_distill.py")
        assert message in capsys.readouterr().err


def test_paired_seeds_counts_wins_losses_zeros_and_divergences(monkeypatch, tmp_path, capsys):
    env = "optenv/MLP-Digits-v0"
    agents = {"adagrad": {"final_loss": [0.0, 1e-3, 2e-6, 5.0], "diverged": [False] * 3 + [True]},
              "pi": {"final_loss": [0.0, 0.0, 3e-6, 1e-4], "diverged": [False] * 4}}
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"envs": {env: {"eval_seeds": [5, 6, 7, 8],
                                                  "agents": agents}}}))
    psi = tmp_path / "psi.json"
    psi.write_text(json.dumps({"seeds": [5, 6, 7, 8], "rows": [
        {"gain": 1.0, "final": [1e-9, 0.0, 0.0, float("inf")]},
        {"gain": [1.2, 0.8], "final": [0.0] * 4}]}))
    out = tmp_path / "paired.json"
    run(monkeypatch, str(results), str(psi), "--against", "psi:1", "--json", str(out),
        script="paired_seeds.py")
    rows = {r["agent"]: r for r in json.loads(out.read_text())["rows"]}
    # against ψ with gain 1 (1e-9, 0, 0, inf): seed by seed, ties (0 = 0) are neither
    assert rows["adagrad"] == {"agent": "adagrad", "median": pytest.approx(5.01e-4), "zeros": 1,
                               "above_tiny": 2, "diverged": 1, "lower": 1, "higher": 2}
    assert (rows["pi"]["zeros"], rows["pi"]["lower"], rows["pi"]["higher"]) == (2, 2, 1)
    assert (rows["psi:1.2,0.8"]["lower"], rows["psi:1.2,0.8"]["higher"]) == (2, 0)
    assert rows["psi:1"]["diverged"] == 1 and rows["psi:1"]["lower"] == 0
    assert "4 seeds 5..8" in capsys.readouterr().out
    psi.write_text(json.dumps({"seeds": [5, 6], "rows": []}))
    for argv, message in (([str(results), str(psi)], "covers seeds 5..6 (2)"),
                          ([str(results), "--against", "sgd"], "--against 'sgd': no such agent"),
                          ([str(tmp_path / "none.json")], "not a readable results"),
                          ([str(results), "--tiny", "-1"], "expected a finite number > 0")):
        with pytest.raises(SystemExit):
            run(monkeypatch, *argv, script="paired_seeds.py")
        assert message in capsys.readouterr().err
