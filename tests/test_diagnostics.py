"""Training diagnostics (issue 14): each metric against a hand computation, the SB3 wiring, the analysis plot."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from agents.diagnostics_callback import metric_keys
from sparse_rl.diagnostics import dormant_fraction, gradient_snr, mask_churn, per_sample_grads, snr_from_grads, srank
from tests.agent_helpers import crash_after_checkpoint, tiny_run

# ------------------------------------------------------------------------------------------ hand computations


def test_dormant_fraction_matches_hand_computation():
    # per-unit mean |a| over the batch: [0, 0.02, 0.5, 3.48] -> layer mean 1.0 -> scores equal those means
    acts = torch.tensor([[0.0, 0.04, -0.5, 3.0], [0.0, 0.0, 0.5, 3.96]])
    assert dormant_fraction(acts, 0.0) == pytest.approx(1 / 4)
    assert dormant_fraction(acts, 0.025) == pytest.approx(2 / 4)  # 0.02 <= 0.025; signs do not matter (|a|)
    assert dormant_fraction(acts, 0.1) == pytest.approx(2 / 4)
    assert dormant_fraction(acts, 0.5) == pytest.approx(3 / 4)  # <= tau, inclusive
    assert dormant_fraction(2 * acts, 0.025) == pytest.approx(2 / 4)  # scale-free: normalised by the layer mean
    assert dormant_fraction(torch.zeros(3, 5), 0.0) == 1.0
    conv = torch.zeros(2, 3, 2, 2)  # units are channels: channel 0 dead, channels 1 and 2 active
    conv[:, 1] = 1.0
    conv[:, 2, 0, 0] = 4.0
    assert dormant_fraction(conv, 0.0) == pytest.approx(1 / 3)


def _matrix_with_singular_values(values: list[float], rows: int = 8) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(rows, len(values), generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(len(values), len(values), generator=gen, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ v.T


def test_srank_matches_hand_computation():
    # sum 16.06; cumulative shares 0.623, 0.934, 0.99626, 0.99938, 1
    features = _matrix_with_singular_values([10.0, 5.0, 1.0, 0.05, 0.01])
    assert srank(features, 0.01) == 3
    assert srank(features, 0.001) == 4
    assert srank(features, 0.5) == 1
    assert srank(torch.zeros(4, 3), 0.01) == 0


def test_mask_churn_matches_hand_computation():
    initial = [torch.tensor([1, 1, 0, 0, 0], dtype=torch.bool), torch.tensor([[1, 0], [0, 1]], dtype=torch.bool)]
    previous = [torch.tensor([1, 0, 1, 0, 0], dtype=torch.bool), torch.tensor([[1, 0], [0, 1]], dtype=torch.bool)]
    current = [torch.tensor([1, 0, 1, 0, 1], dtype=torch.bool), torch.tensor([[0, 1], [0, 1]], dtype=torch.bool)]
    # active 5; new since initial: positions 2, 4 of layer 0 and (0, 1) of layer 1 = 3; since previous: 4 and (0, 1) = 2
    assert mask_churn(initial, current, previous) == (pytest.approx(3 / 5), pytest.approx(2 / 5))
    assert mask_churn(initial, current) == (pytest.approx(3 / 5), 0.0)
    assert mask_churn(initial, initial, initial) == (0.0, 0.0)


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def test_gradient_snr_matches_a_python_loop_over_samples_on_active_parameters():
    torch.manual_seed(0)
    net = TwoLayer()
    mask = torch.rand(4, 3) > 0.4
    with torch.no_grad():
        net.fc1.weight.mul_(mask)
    x, y = torch.randn(16, 3), torch.randn(16, 1)

    def loss(batch):
        xs, ys = batch
        return (net(xs) - ys).pow(2).reshape(-1)

    params = {"fc1.weight": net.fc1.weight, "fc1.bias": net.fc1.bias, "fc2.weight": net.fc2.weight}
    masks = {"fc1.weight": mask, "fc1.bias": None, "fc2.weight": None}
    # reference: autograd per sample, one at a time
    per_sample = {name: [] for name in params}
    for i in range(len(x)):
        grads = torch.autograd.grad(loss((x[i : i + 1], y[i : i + 1])).sum(), list(params.values()))
        for name, g in zip(params, grads):
            per_sample[name].append(g)
    ratios, mean_grads = [], []
    for name, gs in per_sample.items():
        g = torch.stack(gs)
        ratio = g.mean(0).abs() / g.std(0)
        ratio = torch.where(g.std(0) > 0, ratio, torch.zeros_like(ratio))
        ratios.append(ratio[masks[name]] if masks[name] is not None else ratio.reshape(-1))
        mean_grads.append(g.mean(0) * (masks[name] if masks[name] is not None else 1))
    expected_snr = torch.cat(ratios).mean().item()
    expected_norm = torch.sqrt(sum((m**2).sum() for m in mean_grads)).item()

    vmapped = per_sample_grads(net, params, loss, (x, y))
    for name in params:
        torch.testing.assert_close(vmapped[name], torch.stack(per_sample[name]))
    for chunk in (64, 5):  # one chunk, and several of unequal size: the same moments
        snr, grad_norm = gradient_snr(net, params, loss, (x, y), masks, chunk_size=chunk)
        assert snr == pytest.approx(expected_snr, rel=1e-5)
        assert grad_norm == pytest.approx(expected_norm, rel=1e-5)
    assert snr_from_grads(vmapped, masks) == pytest.approx(expected_snr, rel=1e-5)
    # the restriction matters: the inactive weights' (zero-std or not) ratios are left out
    assert snr != pytest.approx(snr_from_grads(vmapped, dict.fromkeys(params)), rel=1e-3)


# ------------------------------------------------------------------------------------------ SB3 runs


def _train(agent: str, method: str, run_dir: Path, *extra: str) -> dict:
    from experiment.plan import plan_run
    from experiment.sb3 import train

    return train(plan_run(tiny_run(agent, method, run_dir, "checkpoint_freq=0", *extra)))


def _columns(run_dir: Path) -> list[str]:
    with open(run_dir / "progress.csv") as f:
        return [name for name in next(csv.reader(f)) if name.startswith("diagnostics/")]


def _policy(run_dir: Path) -> dict[str, torch.Tensor]:
    with zipfile.ZipFile(run_dir / "model.zip") as archive:
        return torch.load(io.BytesIO(archive.read("policy.pth")), weights_only=True)


DIAG = ["diagnostics.freq=20", "diagnostics.batch_size=32"]


@pytest.mark.parametrize(("agent", "method", "groups"), [("sac", "rigl", ("actor", "critic")), ("dqn", "set", ("q",))])
def test_runs_log_diagnostics_and_leave_training_unchanged(tmp_path, agent, method, groups):
    on = _train(agent, method, tmp_path / "on", *DIAG)
    off = _train(agent, method, tmp_path / "off", "diagnostics.freq=0")
    columns = _columns(tmp_path / "on")
    with open(tmp_path / "on" / "progress.csv") as f:
        steps = [float(row["diagnostics/gradient_step"]) for row in csv.DictReader(f) if row["diagnostics/gradient_step"]]
    assert len(steps) >= 5 and steps == [20.0 * (i + 1) for i in range(len(steps))]  # every measurement has its row
    final = json.loads((tmp_path / "on" / "summary.json").read_text())["topology"]["gradient_steps"]
    assert steps[-1] == 20 * (final // 20)  # a point reached by the last gradient steps has its row too (was missed)
    for group in groups:
        assert set(metric_keys(group, (0.0, 0.025, 0.1))) <= set(columns)
        assert "diagnostics/q/dormant_0.025" in metric_keys("q", (0.0, 0.025, 0.1))  # the key names
        values = on["diagnostics"][group]
        assert 0.0 <= values["dormant_0"] <= values["dormant_0.025"] <= values["dormant_0.1"] <= 1.0
        assert 1 <= values["srank"] <= 32 and values["grad_snr"] > 0 and values["weight_norm"] > 0
        assert 0.0 < values["churn_initial"] <= 1.0  # a dynamic method has grown connections since the start
    assert json.loads((tmp_path / "on" / "summary.json").read_text())["diagnostics"] == on["diagnostics"]
    assert _columns(tmp_path / "off") == [] and "diagnostics" not in off
    same, other = _policy(tmp_path / "on"), _policy(tmp_path / "off")
    assert same.keys() == other.keys()
    for name in same:
        assert torch.equal(same[name], other[name]), name
    assert on["score"] == off["score"]


def test_ppo_diagnostics_leave_training_unchanged(tmp_path):
    on = _train("ppo", "rigl", tmp_path / "on", "diagnostics.freq=4", "diagnostics.batch_size=32")
    _train("ppo", "rigl", tmp_path / "off", "diagnostics.freq=0")
    assert "diagnostics/actor/grad_snr" in _columns(tmp_path / "on")
    assert set(on["diagnostics"]) == {"actor", "critic"}
    same, other = _policy(tmp_path / "on"), _policy(tmp_path / "off")
    assert all(torch.equal(same[name], other[name]) for name in same)


def test_dense_run_has_no_churn_and_bad_settings_are_one_line_errors(tmp_path):
    from experiment.plan import UsageError, plan_run

    summary = _train("dqn", "dense", tmp_path / "dense", *DIAG)
    assert summary["diagnostics"]["q"]["churn_initial"] == 0.0
    for bad, message in [
        ("diagnostics.freq=-1", "diagnostics.freq must be >= 0"),
        ("diagnostics.batch_size=1", "diagnostics.batch_size must be >= 2"),
        ("diagnostics.taus=[0.0,-0.1]", r"diagnostics.taus must be a non-empty list of values >= 0"),
        ("diagnostics.srank_delta=0", r"diagnostics.srank_delta must be in \(0, 1\)"),
    ]:
        with pytest.raises(UsageError, match=message):
            plan_run(tiny_run("dqn", "dense", tmp_path / "bad", bad))
    with pytest.raises(Exception, match="frq"):
        tiny_run("dqn", "dense", tmp_path / "bad", "diagnostics.frq=3")


def test_a_failing_measurement_warns_and_training_goes_on(tmp_path, monkeypatch, capsys):
    import agents.diagnostics_callback

    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(agents.diagnostics_callback, "measure_group", broken)
    summary = _train("dqn", "set", tmp_path / "run", *DIAG)
    assert summary["status"] == "completed"
    assert summary["diagnostics"] == {"error": "at gradient step 20: RuntimeError: boom"}
    assert "warning: diagnostics stopped at gradient step 20: RuntimeError: boom\n" in capsys.readouterr().err


def test_group_metrics_count_hidden_units_only_and_the_last_hidden_layer_feeds_srank():
    from agents.diagnostics_callback import DiagnosticsSettings, measure_group
    from sparse_rl.controller import SparseGroup

    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1), nn.Tanh())
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.eye(4, 3))  # unit 0 of the second layer copies the dead unit: dead too
        net[2].bias.zero_()
    x = torch.rand(8, 2) + 0.1  # positive inputs: unit 0 of the first layer is never active
    settings = DiagnosticsSettings(freq=1, batch_size=8, taus=(0.0,), srank_delta=0.01)
    values = measure_group(SparseGroup("q", net), (x,), lambda b: net(b[0]).reshape(-1), settings)
    # hidden units: 3 + 4; dead: unit 0 of each layer and unit 3 of the second (no input): 3 of 7, tanh not counted
    assert values["dormant_0"] == pytest.approx(3 / 7)
    assert values["srank"] == 2  # the second hidden layer: two live units with independent inputs


def test_td3_model_works_with_the_actor_critic_adapter():
    from stable_baselines3 import TD3

    from agents.diagnostics_callback import DiagnosticsSettings, group_losses, isolated_rng, measure_group
    from sparse_rl.controller import SparseGroup

    model = TD3("MlpPolicy", "Pendulum-v1", learning_starts=50, policy_kwargs={"net_arch": [16, 16]}, seed=0)
    model.learn(80)
    groups = [SparseGroup("actor", model.actor), SparseGroup("critic", model.critic)]
    settings = DiagnosticsSettings(freq=1, batch_size=16, taus=(0.0, 0.1), srank_delta=0.01)
    state = torch.get_rng_state()
    with isolated_rng(1, model.device):
        losses = group_losses(model, settings.batch_size, np.random.default_rng(0))
        values = {g.name: measure_group(g, *losses[g.name], settings) for g in groups}
    assert torch.equal(torch.get_rng_state(), state)
    for group in ("actor", "critic"):
        assert values[group]["grad_snr"] > 0 and 1 <= values[group]["srank"] <= 16
    assert values["actor"]["srank"] > 1  # the last hidden layer's, not the 1-unit tanh output's
    # TD3's actor loss is -Q1(s, mu(s)): the mean of the per-sample losses is SB3's actor loss
    inputs, loss = losses["actor"]
    expected = -model.critic.q1_forward(inputs[0], model.actor(inputs[0])).mean()
    torch.testing.assert_close(loss(inputs).mean(), expected)


# ------------------------------------------------------------------------------------------ analysis


def test_analysis_plots_diagnostics_and_skips_quietly_without(tmp_path):
    from analysis.diagnostics_plots import diagnostics_frame, plot_diagnostics
    from analysis.loading import load_runs

    _train("dqn", "set", tmp_path / "runs" / "a", *DIAG)
    _train("dqn", "set", tmp_path / "runs" / "b", "diagnostics.freq=0", "seed=1")
    frame = diagnostics_frame(load_runs(tmp_path / "runs"))
    assert set(frame["group"]) == {"q"} and set(frame["seed"]) == {0}
    assert {"grad_snr", "srank", "dormant_0.025"} <= set(frame["metric"])
    assert (frame["step"] % 20 == 0).all()  # measured at multiples of diagnostics.freq gradient steps
    written = plot_diagnostics(frame, tmp_path / "out", reps=50)
    assert [p.name for p in written] == ["diagnostics_dqn_CartPole.png", "diagnostics_dqn_CartPole.pdf"]
    assert plot_diagnostics(frame.iloc[0:0], tmp_path / "none") == []


def test_sac_and_dqn_per_sample_losses_average_to_sb3s_losses():
    from stable_baselines3 import DQN, SAC
    from torch.nn import functional as F

    from agents.dqn import diagnostic_losses as dqn_losses
    from agents.sac import diagnostic_losses as sac_losses

    sac = SAC("MlpPolicy", "Pendulum-v1", learning_starts=50, policy_kwargs={"net_arch": [16, 16]}, seed=0)
    sac.learn(80)
    data = sac.replay_buffer.sample(16)
    torch.manual_seed(1)
    losses = sac_losses(sac, data)
    torch.manual_seed(1)  # SB3's target, drawing the same next actions
    with torch.no_grad():
        ent_coef = torch.exp(sac.log_ent_coef.detach())
        next_actions, next_log_prob = sac.actor.action_log_prob(data.next_observations)
        next_q, _ = torch.min(torch.cat(sac.critic_target(data.next_observations, next_actions), dim=1), 1, True)
        target = data.rewards + (1 - data.dones) * sac.gamma * (next_q - ent_coef * next_log_prob.reshape(-1, 1))
        critic_loss = 0.5 * sum(F.mse_loss(q, target) for q in sac.critic(data.observations, data.actions))
        inputs, loss = losses["critic"]
        torch.testing.assert_close(loss(inputs).mean(), critic_loss)
        torch.manual_seed(2)
        noise = torch.randn_like(data.actions)
        torch.manual_seed(2)  # SB3's actor loss with the same reparameterisation noise
        actions_pi, log_prob = sac.actor.action_log_prob(data.observations)
        min_q, _ = torch.min(torch.cat(sac.critic(data.observations, actions_pi), dim=1), dim=1, keepdim=True)
        actor_loss = (ent_coef * log_prob.reshape(-1, 1) - min_q).mean()
        _, loss = losses["actor"]
        torch.testing.assert_close(loss((data.observations, noise)).mean(), actor_loss)

    dqn = DQN("MlpPolicy", "CartPole-v1", learning_starts=50, policy_kwargs={"net_arch": [16]}, seed=0)
    dqn.learn(80)
    data = dqn.replay_buffer.sample(16)
    with torch.no_grad():
        next_q, _ = dqn.q_net_target(data.next_observations).max(dim=1)
        target = data.rewards + (1 - data.dones) * dqn.gamma * next_q.reshape(-1, 1)
        current = torch.gather(dqn.q_net(data.observations), dim=1, index=data.actions.long())
        inputs, loss = dqn_losses(dqn, data)["q"]
        torch.testing.assert_close(loss(inputs).mean(), F.smooth_l1_loss(current, target))  # SB3's DQN: Huber
        dqn.loss = "mse"  # agents.dqn.LossDQN's attribute
        inputs, loss = dqn_losses(dqn, data)["q"]
        torch.testing.assert_close(loss(inputs).mean(), F.mse_loss(current, target))


def test_ppo_per_sample_loss_averages_to_sb3s_loss():
    from stable_baselines3 import PPO
    from torch.nn import functional as F

    from agents.diagnostics_callback import rollout_batch
    from agents.ppo import diagnostic_losses as ppo_losses

    ppo = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=1, policy_kwargs={"net_arch": [16]}, seed=0)
    ppo.learn(64)
    batch = rollout_batch(ppo, 32, np.random.default_rng(0))
    obs, actions, _, old_log_prob, advantages, returns = batch
    with torch.no_grad():
        values, log_prob, entropy = ppo.policy.evaluate_actions(obs, actions.long().flatten())
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        ratio = torch.exp(log_prob - old_log_prob)
        clip = ppo.clip_range(ppo._current_progress_remaining)
        policy_loss = -torch.min(advantages * ratio, advantages * torch.clamp(ratio, 1 - clip, 1 + clip)).mean()
        expected = policy_loss - ppo.ent_coef * entropy.mean() + ppo.vf_coef * F.mse_loss(returns, values.flatten())
        inputs, loss = ppo_losses(ppo, batch)["actor"]
        torch.testing.assert_close(loss(inputs).mean(), expected)


def _diagnostic_rows(run_dir: Path, group: str) -> list[tuple[str, ...]]:
    keys = ["diagnostics/gradient_step", *(f"diagnostics/{group}/{m}" for m in ("grad_snr", "srank", "dormant_0.1"))]
    with open(run_dir / "progress.csv") as f:
        return [tuple(row[k] for k in keys) for row in csv.DictReader(f) if row["diagnostics/gradient_step"]]


def test_a_resumed_run_measures_where_and_what_the_uninterrupted_run_does(tmp_path, monkeypatch):
    from experiment.plan import plan_run
    from experiment.sb3 import train

    extra = [*DIAG, "checkpoint_freq=140"]
    train(plan_run(tiny_run("dqn", "set", tmp_path / "whole", *extra)))
    with crash_after_checkpoint(monkeypatch):
        train(plan_run(tiny_run("dqn", "set", tmp_path / "resumed", *extra)))
    train(plan_run(tiny_run("dqn", "set", tmp_path / "resumed", *extra, "resume=true")))
    whole = _diagnostic_rows(tmp_path / "whole", "q")
    assert len(whole) >= 5 and _diagnostic_rows(tmp_path / "resumed", "q") == whole
