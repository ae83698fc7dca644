"""The README's own-loop example runs, and ``SparsityConfig``'s defaults are the configs' (``configs/sparsity/``)."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sparse_rl import UPDATERS, SparsityConfig
from sparse_rl.config import METHOD_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
# One gradient step for the README's `...` placeholder: a critic loss, then an actor loss through the critic.
TRAIN_STEP = """\
    obs = torch.randn(16, 8)
    q = critic(torch.cat([obs, actor(obs)], dim=1))
    critic_optimizer.zero_grad()
    (q - torch.randn_like(q)).pow(2).mean().backward()
    critic_optimizer.step()
    actor_optimizer.zero_grad()
    (-critic(torch.cat([obs, actor(obs)], dim=1)).mean()).backward()
    actor_optimizer.step()
"""


def readme_own_loop_example() -> str:
    """The Python block of the README's "your own training loop" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The sparse core, with your own training loop") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_own_loop_example_runs_and_keeps_the_sparsity(capsys: pytest.CaptureFixture[str]) -> None:
    code = readme_own_loop_example()
    placeholder = "    ...  # your losses, backward() and optimizer.step() calls\n"
    assert placeholder in code
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile(code.replace(placeholder, TRAIN_STEP), "README.md", "exec"), namespace)
    controller = namespace["controller"]
    assert controller.num_updates >= 1  # RigL changed the topology at least once (every 1,000 steps up to 80%)
    stats = controller.stats()
    assert stats["groups"]["actor"]["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert float(capsys.readouterr().out) == pytest.approx(0.9, abs=0.01)
    online, target = namespace["critic"], namespace["critic_target"]
    for (name, mask), (_, target_mask) in zip(online.named_buffers(), target.named_buffers()):
        assert name.endswith("weight_mask") and torch.equal(mask, target_mask), name


@pytest.mark.parametrize("method", sorted(UPDATERS.names()))
def test_dataclass_defaults_equal_the_method_config(method: str) -> None:
    yaml = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "sparsity" / f"{method}.yaml"))
    config = SparsityConfig(method=method)
    for f in fields(SparsityConfig):
        if f.name != "group_sparsity":
            assert getattr(config, f.name) == yaml[f.name], f.name
    config.validate()


def test_explicit_values_win_over_defaults_and_unknown_methods_fail_clearly() -> None:
    config = SparsityConfig(method="rigl", sparsity=0.95, update_interval=250, drop_fraction=0.3)
    assert (config.sparsity, config.update_interval, config.drop_fraction, config.end_fraction) == (0.95, 250, 0.3, 0.8)
    assert SparsityConfig(method="prune").start_fraction == 0.2
    assert set(METHOD_DEFAULTS) == set(UPDATERS.names())
    with pytest.raises(KeyError, match="valid choices"):
        SparsityConfig(method="lottery").validate()
