"""PPO's ``target_kl`` early stop per member (docs/design.md decision 41): a member past ``1.5·target_kl`` takes no
further step of that ``train()``, as SB3's ``PPO.train``, without desynchronising the others; its Adam step count, its
topology clock and its logs stay its own."""

from __future__ import annotations

import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.type_aliases import RolloutBufferSamples

from agents.population.rollout import TrainLog
from tests.test_population_parity import _assert_member_equals
from tests.test_population_ppo import (
    EPOCHS,
    MINIBATCHES,
    _minibatches,
    _population,
    _ppo_member_state,
    _ppo_run,
    _progress_rows,
    _sb3_ppo,
    _sb3_train,
    _stacked,
)

TARGET_KL = 0.02
STOPPER = 1  # the member whose minibatches are far off its policy in the first train()


def _off_policy(batches: list[RolloutBufferSamples], first: int, generator: torch.Generator) -> list[RolloutBufferSamples]:
    """The minibatches from ``first`` on with old log-probabilities far from the policy's (approx_kl ≈ 0.5 ≫
    1.5·TARGET_KL); the ones before are the policy's own (approx_kl 0 before the first step)."""
    out = []
    for i, batch in enumerate(batches):
        noise = torch.randn(batch.old_log_prob.shape, generator=generator)
        out.append(batch._replace(old_log_prob=batch.old_log_prob + (1.0 * noise if i >= first else 0)))
    return out


def _on_policy(model: PPO, batches: list[RolloutBufferSamples]) -> list[RolloutBufferSamples]:
    """The minibatches with the model's current log-probabilities as the old ones (no early stop at the first)."""
    out = []
    for batch in batches:
        space = model.action_space
        acts = batch.actions.long().flatten() if hasattr(space, "n") else batch.actions
        with torch.no_grad():
            _, log_prob, _ = model.policy.evaluate_actions(batch.observations, acts)
        out.append(batch._replace(old_log_prob=log_prob))
    return out


def _population_train(pop, per_member: list[list[RolloutBufferSamples]]) -> tuple[torch.Tensor, dict]:
    """SB3's ``train()`` loop with each member's stop: ``update`` with the members still training; the epochs each
    member began (SB3's ``_n_updates`` increments) and the rollout loop's log of the train()."""
    training, epochs = torch.ones(pop.k, dtype=torch.bool), torch.zeros(pop.k, dtype=torch.int64)
    log = TrainLog(pop.k, torch.device("cpu"))
    for epoch in range(EPOCHS):
        epochs += training
        log.begin_epoch(training)
        for i in range(MINIBATCHES):
            step = epoch * MINIBATCHES + i
            metrics = pop.update(*_stacked([b[step] for b in per_member]), training=training)
            log.add(metrics, training)
            training = metrics["continue_training"]
    return epochs, log.values()


@pytest.mark.parametrize("kind", ["box", "discrete"])
def test_a_member_stopped_by_target_kl_equals_its_sb3_run_and_the_others_go_on(kind):
    """Member 1 stops at the second minibatch of its first train() (SB3: that step is not taken, nor the rest of the
    epochs); the others take all four steps. In the second train() every member trains on: member 1's Adam takes
    its steps 2-5 (their bias corrections), the others their steps 5-8. Each member's weights, Adam moments and
    step counts equal its own SB3 PPO's after both train() calls."""
    methods = ["rigl", "static", "dense"]
    models = [_sb3_ppo(seed, method, kind, None, 0.0) for seed, method in enumerate(methods)]
    for model in models:
        model.target_kl = TARGET_KL
    pop = _population(models, kind, None, 0.0)
    pop.target_kl = TARGET_KL
    generator = torch.Generator().manual_seed(7)
    updates = []
    for train in range(2):
        per_member = [_on_policy(model, _minibatches(model, generator)) for model in models]
        if train == 0:
            per_member[STOPPER] = _off_policy(per_member[STOPPER], 1, generator)
        for model, batches in zip(models, per_member):
            _sb3_train(model, batches)
        epochs, logged = _population_train(pop, per_member)
        updates.append(epochs)
        for member, model in enumerate(models):  # SB3's train/ values, the stopping minibatch's losses included
            for key in ("policy_gradient_loss", "value_loss", "entropy_loss", "clip_fraction", "approx_kl", "loss"):
                theirs = model.logger.name_to_value[f"train/{key}"]
                assert float(logged[key][member]) == pytest.approx(theirs, rel=1e-5, abs=1e-7), (train, member, key)
    assert [m._n_updates for m in models] == [4, 1 + 2, 4]  # SB3 stopped member 1 in its first epoch
    assert updates[0].tolist() == [2, 1, 2] and updates[1].tolist() == [2, 2, 2]
    assert pop.adam_steps.tolist() == [8, 1 + 4, 8]
    for member, model in enumerate(models):
        params = list(model.policy.parameters())
        assert {int(model.policy.optimizer.state[p]["step"]) for p in params} == {int(pop.adam_steps[member])}
        _assert_member_equals(pop, member, model, atol=5e-6)
        if kind == "box":
            torch.testing.assert_close(pop.log_std[member].detach(), model.policy.log_std.detach(), atol=5e-6, rtol=1e-5)
        for group in pop.member_groups(member):
            for layer in group.layers:
                theirs = model.policy.get_submodule(layer.name).weight
                ours = layer.optimizer_state(None)
                state = model.policy.optimizer.state[theirs]
                torch.testing.assert_close(ours[0], state["exp_avg"], atol=5e-6, rtol=1e-4)
                torch.testing.assert_close(ours[1], state["exp_avg_sq"], atol=1e-9, rtol=1e-4)


@pytest.mark.parametrize("target_kl", ["0.002", "0.000002"])
def test_a_member_stopped_early_trains_bit_identically_alone_and_in_a_population(target_kl, tmp_path):
    """Decisions 34 and 41 with ``target_kl``: member 3 (RigL) stops early in some train() calls where the others
    train on or stop elsewhere (Pendulum; 0.002: only member 3 stops, once; 0.000002: every member stops, member 3
    in its 3rd train() before RigL's update point 10, which then waits for its next gradient step: this fails if its
    controller is stepped while it is stopped). Alone and in the trio its weights, masks, Adam moments, evaluations
    and progress rows (train/n_updates counting its own epochs, the losses up to its stop) are the same bit for bit,
    and its controller's clock catches up with the loop's after each train() (the SB3 path's ClockSyncCallback)."""
    kl = f"+agent.sb3.target_kl={target_kl}"
    alone = _ppo_run(tmp_path / "alone", [(3, "rigl")], "Pendulum", kl)
    alone.learn()
    trio = _ppo_run(tmp_path / "trio", [(5, "set"), (3, "rigl"), (0, "dense")], "Pendulum", kl)
    trio.learn()
    nominal = trio.loop.n_updates
    assert trio.loop.member_epochs[1] == alone.loop.member_epochs[0] < nominal, "member 3 did not stop early"
    assert trio.agent.adam_steps[1] == alone.agent.adam_steps[0]
    assert len(set(trio.agent.adam_steps.tolist())) > 1, "the members stopped alike: nothing to desynchronise"
    if target_kl == "0.002":
        assert trio.loop.member_epochs.tolist() == [nominal, alone.loop.member_epochs[0], nominal]
        assert trio.agent.adam_steps[1] < trio.agent.adam_steps[0] == trio.loop.clock
    assert [m.controller.clock for m in trio.members] == [trio.loop.clock] * 3
    assert alone.members[0].controller.num_updates > 0
    reference, state = _ppo_member_state(alone, 3), _ppo_member_state(trio, 3)
    assert state.keys() == reference.keys()
    for key, tensor in reference.items():
        assert torch.equal(state[key], tensor), key
    assert alone.members[0].eval_results == trio.members[1].eval_results
    rows = _progress_rows(tmp_path / "alone" / "rigl_3")
    assert rows == _progress_rows(tmp_path / "trio" / "rigl_3")
    updates = [int(r["train/n_updates"]) for r in rows if r.get("train/n_updates")]
    assert updates[-1] < 2 * len(updates)  # SB3 counts the epochs begun: fewer than n_epochs per train()


def test_target_kl_is_accepted_by_the_population_engine():
    from agents.population.compose import check_supported
    from tests.agent_helpers import compose_run

    check_supported(compose_run(["agent=ppo", "env=CartPole", "agent.normalize=false", "+agent.sb3.target_kl=0.01"]))


@pytest.mark.parametrize("stop", [100, 192])  # inside a rollout; at a rollout's end
def test_a_population_with_early_stops_resumes_exactly(stop, tmp_path):
    """The members' Adam step counts and epochs (train/n_updates) are in the checkpoint: the resumed run equals the
    straight one."""
    from agents.callbacks import TrainingStopped

    members, kl = [(0, "set"), (3, "rigl")], "+agent.sb3.target_kl=0.002"
    straight = _ppo_run(tmp_path / "straight", members, "Pendulum", kl)
    straight.learn()
    assert straight.loop.member_epochs.tolist() != [straight.loop.n_updates] * 2, "no member stopped early"
    first = _ppo_run(tmp_path / "resumed", members, "Pendulum", kl)
    with pytest.raises(TrainingStopped):
        first.learn(stop=lambda: first.num_timesteps >= stop)
    first.close()
    resumed = _ppo_run(tmp_path / "resumed", members, "Pendulum", kl, "resume=true")
    resumed.load_checkpoint()
    resumed.learn()
    for name, tensor in straight.agent.state_dict().items():
        assert torch.equal(tensor, resumed.agent.state_dict()[name]), name
    assert resumed.agent.adam_steps.tolist() == straight.agent.adam_steps.tolist()
    assert resumed.loop.member_epochs.tolist() == straight.loop.member_epochs.tolist()
    for seed in (0, 3):
        name = f"{dict((s, m) for s, m in members)[seed]}_{seed}"
        assert _progress_rows(tmp_path / "resumed" / name)[-1] == _progress_rows(tmp_path / "straight" / name)[-1]


def test_a_stopped_members_rigl_update_waits_for_its_next_optimizer_step(tmp_path, monkeypatch):
    """On the SB3 path a RigL update runs at an optimizer step (the clock follows ``policy.optimizer``'s steps); a
    member stopped by target_kl takes none until the next train(), so an update point inside its skipped steps
    waits for that one (``ClockSyncCallback``'s ``advance_to``). Pendulum, target_kl 0.000002: the member stops at
    its KL check of clock step 10, RigL's update point 10."""
    from agents.population.ppo import PopulationPPO
    from sparse_rl.controller import TopologyController

    taken: list[int] = []  # the clock steps at which the member took an optimizer step
    updates: list[tuple[int, float]] = []  # (clock step of the update, its update point)
    update, step = PopulationPPO.update, TopologyController.step

    def recording_update(self, *args, **kwargs):
        out = update(self, *args, **kwargs)
        if bool(out["continue_training"][0]):
            taken.append(run.loop.clock + 1)
        return out

    def recording_step(self, t):
        before = self.num_updates
        changed = step(self, t)
        if self.num_updates != before:
            updates.append((t, self.last_update["step"]))
        return changed

    monkeypatch.setattr(PopulationPPO, "update", recording_update)
    monkeypatch.setattr(TopologyController, "step", recording_step)
    run = _ppo_run(tmp_path, [(3, "rigl")], "Pendulum", "+agent.sb3.target_kl=0.000002")
    run.learn()
    assert updates and all(t in taken for t, _ in updates), (updates, taken)
    assert any(t > point for t, point in updates), "no update point fell inside a stop: the test needs another kl"
