"""L2L and RNNprop agents (agents/l2l.py, agents/rnnprop.py, agents/metatrain.py)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from agents.l2l import L2LAgent, l2l_policy
from agents.metatrain import VAL_SEED0, CoordinatewiseLSTMOptimizer, MetaTrainConfig
from agents.rnnprop import RNNpropAgent, rnnprop_family, rnnprop_policy
from optenv.cli import main as cli
from optenv.policy import LearnedOptimizer, make_problem, rollout
from optenv.problems.quadratic import QuadraticFamily
from optenv.registry import load_agent, make_agent, task_for

POLICIES = {"l2l": l2l_policy, "rnnprop": rnnprop_policy,
            "l2l-gac": functools.partial(l2l_policy, gac=5)}  # global averaging cells


def _perturbed(make, seed: int = 3) -> CoordinatewiseLSTMOptimizer:
    """A policy with larger-than-init weights, so trajectories are far from trivial."""
    policy = make(seed=seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.mul_(3.0)
    return policy


class SplitQuadratic(nn.Module):
    """‖Wθ − y‖² with θ laid out as a (2, 3) matrix and a (4,) vector (two tensors)."""

    def __init__(self, W: torch.Tensor, y: torch.Tensor, x0: torch.Tensor) -> None:
        super().__init__()
        self.W, self.y = W, y
        self.a = nn.Parameter(x0[:6].reshape(2, 3).clone())
        self.b = nn.Parameter(x0[6:].clone())

    def forward(self) -> torch.Tensor:
        theta = torch.cat([self.a.reshape(-1), self.b])
        return (self.W @ theta - self.y).square().sum()


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_learned_optimizer_reproduces_rollout(name):
    policy = _perturbed(POLICIES[name])
    prob, x0 = make_problem(QuadraticFamily(dim=10, init_std=0.5), [11])
    ref = rollout(policy, prob, 30, x0=x0)
    W, y = prob.instance_data["W"][0], prob.instance_data["y"][0]
    model = SplitQuadratic(W, y, x0[0])
    opt = LearnedOptimizer(model.parameters(), policy)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = model()
        losses.append(loss.item())
        loss.backward()
        opt.step(loss=loss)
    losses.append(model().item())
    torch.testing.assert_close(torch.tensor(losses), ref.objective[0], rtol=1e-5, atol=1e-6)
    theta = torch.cat([model.a.detach().reshape(-1), model.b.detach()])
    torch.testing.assert_close(theta, ref.x[0], rtol=1e-5, atol=1e-6)
    assert ref.objective[0, -1] != ref.objective[0, 0]  # it did move


def test_network_shapes_and_output_rules():
    l2l, rnn = l2l_policy(), rnnprop_policy()
    assert l2l.features == "l2l" and rnn.features == "adam"
    assert rnn.make_features().beta1 == rnn.make_features().beta2 == 0.95
    # L2L: 2 LSTM layers of 20, linear head; RNNprop adds FC(20) in front
    n_lstm = 4 * 20 * (2 + 20 + 2) + 4 * 20 * (20 + 20 + 2)
    assert sum(p.numel() for p in l2l.parameters()) == n_lstm + 21
    assert sum(p.numel() for p in rnn.parameters()) == (2 * 20 + 20) + 4 * 20 * 42 * 2 + 21
    feats = torch.randn(3, 7, 2) * 100
    state = rnn.reset(7, (), 3)
    assert state["h"].shape == (3, 7, 2, 20)
    for _ in range(3):
        delta, state = rnn.step(feats, state)
        assert delta.abs().max() <= 0.1  # Δθ = α·tanh(·), α = 0.1
    d1, _ = l2l.step(feats, l2l.reset(7, (), 3))
    with torch.no_grad():
        l2l.head.weight.mul_(2.0)
        l2l.head.bias.mul_(2.0)
    d2, _ = l2l.step(feats, l2l.reset(7, (), 3))
    torch.testing.assert_close(d2, 2 * d1)  # linear output, scaled by 0.1
    # coordinatewise: permuting coordinates permutes the steps
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    d3, _ = l2l.step(feats[:, perm], l2l.reset(7, (), 3))
    torch.testing.assert_close(d3, d2[:, perm])
    with pytest.raises(ValueError, match="features must be"):
        l2l.step(torch.randn(3, 7, 3), l2l.reset(7, (), 3))


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="unroll"):
        MetaTrainConfig(unroll=0)
    with pytest.raises(ValueError, match="weighting"):
        L2LAgent(weighting="mean")
    with pytest.raises(ValueError, match="output"):
        CoordinatewiseLSTMOptimizer(features="l2l", input_dim=2, output="relu")
    with pytest.raises(ValueError, match="unknown feature set"):
        CoordinatewiseLSTMOptimizer(features="nope", input_dim=2)
    with pytest.raises(TypeError):
        L2LAgent().train("optenv/Quadratic-v0", iterations=1, not_an_option=3)
    for name, bad in (("lr", float("inf")), ("clip", float("inf")), ("horizon", True),
                      ("second_order", "no")):
        with pytest.raises(ValueError, match=f"{name} must be"):
            MetaTrainConfig(**{name: bad})


def test_rnnprop_training_family_is_augmented():
    family, _ = task_for("optenv/MLP-Sigmoid-Digits-v0")
    prob = rnnprop_family(family).sample(torch.Generator().manual_seed(0), 2)
    assert prob.n == family.sample(torch.Generator().manual_seed(0), 1).n + 20
    assert prob.groups[-1].name == "convex"
    scale = prob.inner.scale  # random scaling, L = 3 on f
    assert scale.min() >= torch.exp(torch.tensor(-3.0)) and scale.max() <= torch.exp(
        torch.tensor(3.0))
    assert scale.max() / scale.min() > 100


def test_l2l_learns_on_quadratics():
    """A short run beats its own untrained start on held-out validation problems."""
    agent = L2LAgent(seed=0)
    family, _ = task_for("optenv/Quadratic-v0")
    untrained = agent.policy()
    prob, x0 = make_problem(family, range(VAL_SEED0, VAL_SEED0 + 16))
    with torch.no_grad():
        before = rollout(untrained, prob, 20, x0=x0, minibatch_seed=VAL_SEED0)
    before = float(before.objective[:, :20].double().sum(1).mean())
    summary = agent.train("optenv/Quadratic-v0", iterations=40, horizon=20, unroll=10, batch=32,
                          lr=3e-3, val_every=10, val_problems=16)
    assert summary["final"]["val_best"] < 0.7 * before, (summary["final"], before)
    assert agent.training_cost["env_steps"] == 40 * 32 * 20 + 4 * 16 * 20
    shown = agent.hyperparams()  # what the bench's table shows: the options trained with
    assert shown["env"] == "optenv/Quadratic-v0" and shown["horizon"] == 20
    assert shown["iterations"] == 40 and shown["lr"] == 3e-3 and shown["unroll"] == 10


def test_init_warm_starts_from_a_saved_agent(tmp_path: Path):
    saved = L2LAgent(seed=5)
    path = saved.save(tmp_path / "a.pt")
    agent = L2LAgent(seed=0)
    agent.train("optenv/Quadratic-v0", iterations=1, horizon=4, unroll=4, batch=2,
                val_problems=2, lr=1e-12, init=str(path))
    assert agent.training_cost["env_steps"] == 1 * 2 * 4 + 2 * 4  # no cost in the init
    saved.training_cost = {"env_steps": 100.0, "wall_s": 1.0}
    path2 = saved.save(tmp_path / "b.pt")
    again = L2LAgent(seed=0)
    again.train("optenv/Quadratic-v0", iterations=1, horizon=4, unroll=4, batch=2,
                val_problems=2, init=str(path2))
    assert again.training_cost["env_steps"] == 100 + 16  # warm start's cost is counted
    for k, v in saved.policy().state_dict().items():
        torch.testing.assert_close(agent.policy().state_dict()[k], v, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="different network"):
        L2LAgent(hidden=8).train("optenv/Quadratic-v0", iterations=1, init=str(path))
    with pytest.raises(ValueError, match="init"):
        L2LAgent(init=str(tmp_path / "missing.pt"))
    # another agent's file (Metz: no LSTM config) is named, not a TypeError from inside
    from agents.metz import MetzAgent

    other = MetzAgent(seed=0).save(tmp_path / "metz.pt")
    with pytest.raises(ValueError, match="holds no L2L/RNNprop network"):
        L2LAgent().train("optenv/Quadratic-v0", iterations=1, horizon=4, unroll=4, batch=2,
                         val_problems=2, init=str(other))


def test_save_load_round_trip(tmp_path: Path):
    agent = RNNpropAgent(seed=4, hidden=8)
    with torch.no_grad():
        for p in agent.policy().parameters():
            p.add_(0.01)
    path = agent.save(tmp_path / "agent.pt")
    back = load_agent(path)
    assert type(back) is RNNpropAgent and back.config() == agent.config()
    assert back.augment is True and back.policy().hidden == 8
    for (k1, v1), (k2, v2) in zip(agent.policy().state_dict().items(),
                                  back.policy().state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    family = QuadraticFamily(dim=5)
    a = rollout(agent.policy(), family, 10, seeds=[1, 2])
    b = rollout(back.policy(), family, 10, seeds=[1, 2])
    assert torch.equal(a.objective, b.objective)
    assert isinstance(make_agent("l2l"), L2LAgent)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state"]["policy"]


@pytest.mark.parametrize("agent,env,extra", [
    ("l2l", "optenv/Quadratic-v0", ["--set", "batch=4"]),
    ("rnnprop", "optenv/MLP-Sigmoid-Digits-v0", ["--horizon", "6", "--set", "unroll=3",
                                                  "--set", "batch=2"]),
])
def test_cli_train_and_resume(tmp_path: Path, capsys, agent, env, extra):
    common = ["train", agent, "--env", env, "--set", "val_problems=2", "--set", "val_every=1",
              "--quiet", *extra]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert cli([*common, "--iterations", "3", "--out", str(straight)]) == 0
    assert cli([*common, "--iterations", "2", "--out", str(resumed)]) == 0
    assert cli([*common, "--iterations", "3", "--out", str(resumed), "--resume"]) == 0
    lines = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [1, 2, 3]
    assert all("val" in r and r["skipped"] == 0 for r in lines)
    ref = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["meta_loss"] for r in ref] == [r["meta_loss"] for r in lines]
    w1, w2 = _weights(straight / "agent.pt"), _weights(resumed / "agent.pt")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # resume is exact
    config = json.loads((resumed / "config.json").read_text())
    assert config["env_id"] == env and config["train"]["iterations"] == 3
    loaded = load_agent(resumed / "agent.pt")
    assert loaded.summary["final"]["iterations"] == 3.0
    ckpt = torch.load(resumed / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["iteration"] == 3
    # resuming with different training options is refused, naming them
    with pytest.raises(ValueError, match="unroll"):
        make_agent(agent).train(env, iterations=4, out=resumed, resume=True, unroll=2,
                                val_problems=2, val_every=1)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_forget_bias_opens_the_forget_gates_only(name):
    base, biased = POLICIES[name](seed=2), POLICIES[name](seed=2, forget_bias=1.0)
    h = base.hidden
    for cell0, cell1 in zip(base.cells, biased.cells, strict=True):
        delta = cell1.bias_ih.detach() - cell0.bias_ih.detach()
        torch.testing.assert_close(delta[h:2 * h], torch.ones(h))
        assert torch.all(delta[:h] == 0) and torch.all(delta[2 * h:] == 0)
        torch.testing.assert_close(cell1.weight_ih, cell0.weight_ih, rtol=0, atol=0)
    assert biased.config()["forget_bias"] == 1.0
    rebuilt = CoordinatewiseLSTMOptimizer(**biased.config())
    rebuilt.load_state_dict(biased.state_dict())  # a saved config rebuilds the network
    with pytest.raises(ValueError, match="forget_bias"):
        POLICIES[name](forget_bias=float("nan"))


def test_cosine_lr_schedule_is_applied_per_iteration(tmp_path: Path):
    cfg = MetaTrainConfig(iterations=4, lr=1e-2, lr_schedule="cosine")
    assert [round(cfg.lr_at(i), 6) for i in (1, 2, 3, 4)] == [0.01, 0.008536, 0.005, 0.001464]
    assert MetaTrainConfig(lr=1e-2).lr_at(3) == 1e-2
    with pytest.raises(ValueError, match="lr_schedule"):
        MetaTrainConfig(lr_schedule="step")
    agent = L2LAgent(seed=0, forget_bias=1.0)
    agent.train("optenv/Quadratic-v0", iterations=3, horizon=4, unroll=4, batch=2,
                val_problems=2, lr=1e-2, lr_schedule="cosine", out=tmp_path)
    opt_state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["optimizer"]
    assert opt_state["param_groups"][0]["lr"] == pytest.approx(0.0025)  # ½(1 + cos 2π/3)
    # the schedule depends on iterations: a cosine run cannot be extended on resume
    with pytest.raises(ValueError, match="cannot resume"):
        L2LAgent(seed=0, forget_bias=1.0).train(
            "optenv/Quadratic-v0", iterations=4, horizon=4, unroll=4, batch=2,
            val_problems=2, lr=1e-2, lr_schedule="cosine", out=tmp_path, resume=True)
    short = {"horizon": 4, "unroll": 4, "batch": 2, "val_problems": 2}
    L2LAgent(seed=0).train("optenv/Quadratic-v0", iterations=3, out=tmp_path / "c", **short)
    with pytest.raises(ValueError, match="has done 3 already"):
        L2LAgent(seed=0).train("optenv/Quadratic-v0", iterations=2, out=tmp_path / "c",
                               resume=True, **short)
    with pytest.raises(ValueError, match="resume=True needs the run folder"):
        L2LAgent().train("optenv/Quadratic-v0", iterations=1, resume=True)
    assert json.loads((tmp_path / "config.json").read_text())["policy"]["forget_bias"] == 1.0


def test_saved_warm_started_agent_loads_without_its_init_file(tmp_path: Path):
    init = L2LAgent(seed=5).save(tmp_path / "init.pt")
    agent = L2LAgent(seed=0, init=str(init))
    agent.train("optenv/Quadratic-v0", iterations=1, horizon=4, unroll=4, batch=2,
                val_problems=2)
    assert "init" not in agent.config()
    assert agent.hyperparams()["init"] == str(init)  # provenance stays in the summary
    saved = agent.save(tmp_path / "agent.pt")
    init.unlink()
    loaded = load_agent(saved)
    for k, v in agent.policy().state_dict().items():
        assert torch.equal(loaded.policy().state_dict()[k], v)


def test_resume_refuses_a_different_augment_option(tmp_path: Path):
    short = {"horizon": 4, "unroll": 4, "batch": 2, "val_problems": 2}
    env = "optenv/MLP-Sigmoid-Digits-v0"
    RNNpropAgent(seed=0, hidden=4).train(env, iterations=1, out=tmp_path, **short)
    with pytest.raises(ValueError, match=r"cannot resume.*augment"):
        RNNpropAgent(seed=0, hidden=4, augment=False).train(env, iterations=2, out=tmp_path,
                                                            resume=True, **short)
    RNNpropAgent(seed=0, hidden=4).train(env, iterations=2, out=tmp_path, resume=True, **short)


def test_raw_gradient_preprocessing_option(tmp_path: Path):
    """``preprocess="none"`` feeds the raw gradient (the reference code's quadratic setup);
    it reaches the network through the CLI's --set and survives save/load and resume."""
    agent = L2LAgent(preprocess="none", scale=1.0)
    pol = agent.policy()
    assert (pol.features, pol.input_dim, pol.scale) == ("gradient", 1, 1.0)
    # the network reads g itself: doubling the gradient changes the step
    prob, _ = make_problem(QuadraticFamily(), [0])
    state = pol.reset(prob.n, prob.groups, 1)
    g = torch.full((1, prob.n, 1), 0.5)
    a, _ = pol.step(g, state)
    b, _ = pol.step(2 * g, state)
    assert not torch.allclose(a, b)
    out = tmp_path / "run"
    argv = ["train", "l2l", "--env", "optenv/Quadratic-v0", "--iterations", "1", "--horizon",
            "4", "--set", "unroll=4", "--set", "batch=2", "--set", "val_problems=2",
            "--set", 'preprocess="none"', "--set", "scale=0.5", "--out", str(out), "--quiet"]
    assert cli(argv) == 0
    loaded = load_agent(out / "agent.pt")
    assert loaded.config()["preprocess"] == "none" and loaded.policy().scale == 0.5
    with pytest.raises(ValueError, match=r"cannot resume.*preprocess"):
        L2LAgent(scale=0.5).train("optenv/Quadratic-v0", iterations=2, horizon=4, unroll=4,
                                  batch=2, val_problems=2, out=out, resume=True)
    with pytest.raises(ValueError, match="preprocess must be one of"):
        L2LAgent(preprocess="log")
    with pytest.raises(ValueError, match="scale must be finite"):
        L2LAgent(scale=0.0)


def test_global_averaging_cells(tmp_path: Path):
    """``gac`` cells (L2L §2.1) share one activation across the coordinates of a problem:
    a coordinate's step then depends on the other coordinates' gradients, the network stays
    equivariant to permuting coordinates, problems in a batch stay independent, and the
    option survives save/load; a saved agent without the option warm-starts a gac=0 one."""
    torch.manual_seed(0)
    g = torch.randn(2, 6, 2)
    for gac, shared in ((0, False), (3, True)):
        pol = _perturbed(functools.partial(l2l_policy, gac=gac))
        state = pol.reset(6, (), 2)
        a, new = pol.step(g, state)
        h = new["h"]  # (B, n, layers, hidden): the first gac cells agree over coordinates
        assert torch.allclose(h[:, :, :, :3], h[:, :1, :, :3].expand_as(h[:, :, :, :3])) \
            == shared
        # changing coordinate 5's gradient moves coordinate 0's step only through the gac
        g2 = g.clone()
        g2[:, 5] += 1.0
        b, _ = pol.step(g2, state)
        assert (not torch.allclose(a[:, 0], b[:, 0])) == shared
        # permuting coordinates permutes steps; the second problem does not see the first's
        perm = torch.randperm(6)
        c, _ = pol.step(g[:, perm], state)
        torch.testing.assert_close(c, a[:, perm])
        g3 = g.clone()
        g3[0] *= 3.0
        d, _ = pol.step(g3, state)
        torch.testing.assert_close(d[1], a[1])
    agent = L2LAgent(gac=4, hidden=8)
    path = agent.save(tmp_path / "gac.pt")
    loaded = load_agent(path)
    assert loaded.config()["gac"] == 4 and loaded.policy().gac == 4
    # an agent file saved before the option existed has no "gac": it means 0
    plain = L2LAgent(hidden=8)
    blob = torch.load(plain.save(tmp_path / "plain.pt"), weights_only=True)
    del blob["state"]["policy_config"]["gac"]
    torch.save(blob, tmp_path / "old.pt")
    L2LAgent(hidden=8).train("optenv/Quadratic-v0", iterations=1, horizon=4, unroll=4,
                             batch=2, val_problems=2, init=str(tmp_path / "old.pt"))
    with pytest.raises(ValueError, match="different network"):
        L2LAgent(hidden=8, gac=2).train("optenv/Quadratic-v0", iterations=1, horizon=4,
                                        unroll=4, batch=2, val_problems=2,
                                        init=str(tmp_path / "old.pt"))
    trained = L2LAgent(hidden=8, gac=2, preprocess="none")
    trained.train("optenv/Quadratic-v0", iterations=1, horizon=4, unroll=4, batch=2,
                  val_problems=2)
    shown = trained.hyperparams()  # the bench's table names the network options too
    assert (shown["gac"], shown["preprocess"], shown["hidden"]) == (2, "none", 8)
    for bad in (-1, 9, 1.5, True):
        with pytest.raises(ValueError, match="gac must be an int"):
            L2LAgent(gac=bad, hidden=8)
