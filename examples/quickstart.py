"""Quickstart: an environment, a tuned Adam baseline, and its update rule on your own model.

    python examples/quickstart.py

1. ``optenv/MLP-Digits-v0`` is a Gymnasium env: one episode is one training run.
2. ``make_agent("adam")`` tunes Adam's learning rate on that env (an 11-value grid ×
   3 seeds as one batched computation) and evaluates it on held-out seeds.
3. ``LearnedOptimizer`` runs the tuned update rule, like any StepPolicy, as a
   ``torch.optim.Optimizer`` on an ``nn.Module`` of your own.
"""

from __future__ import annotations

import gymnasium as gym
import torch
from torch import nn

import optenv
from optenv import LearnedOptimizer, make_agent, rollout, task_for

ENV_ID = "optenv/MLP-Digits-v0"
STEPS = 100

# 1. the environment: act with a step Δx for every parameter, observe features
env = gym.make(ENV_ID)
obs, info = env.reset(seed=0)
obs, reward, terminated, truncated, info = env.step(env.action_space.sample() * 0)
print(f"{ENV_ID}: {env.action_space.shape[0]} parameters, observation {obs.shape}, "
      f"loss {info['loss']:.4f}")
env.close()

# 2. a tuned baseline through the Python API
agent = make_agent("adam")
summary = agent.train(ENV_ID, steps=STEPS)
print(f"tuned Adam: lr = {summary['hyperparams']['lr']:.3g} "
      f"({agent.training_cost['env_steps']:.0f} env steps of tuning)")
family, _ = task_for(ENV_ID)
result = rollout(agent.policy(), family, STEPS, seeds=[1000, 1001, 1002])  # held-out seeds
print("final loss on held-out seeds:", [round(v, 4) for v in result.final.tolist()])

# 3. the same update rule as a torch optimizer on your own model
gen = torch.Generator().manual_seed(0)
x = torch.randn(256, 8, generator=gen)
y = (x[:, :1] * 2 - x[:, 1:2]).tanh()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
opt = LearnedOptimizer(model.parameters(), agent.policy())
for step in range(201):
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step(loss=loss)
    if step % 50 == 0:
        print(f"step {step:3d}  loss {loss.item():.5f}")
print(f"optenv {optenv.__version__}: done")
