"""Gymnasium's classic-control dynamics as array code over many envs: the same float operations, in the same order.

Each class is one env's ``step`` from gymnasium 1.x rewritten over a batch (state ``[n, d]`` float64, one action per
env); constants are read from an unwrapped gymnasium instance of the env, and resets are left to those instances
(:class:`envs.batched.ClassicEnvs`), so reset draws come from gymnasium's own code and seeded ``np_random``. Every
expression keeps gymnasium's association order and dtypes (e.g. Pendulum's float32 torque terms), so a batch equals
gymnasium's envs bit for bit (``tests/test_batched_envs.py`` checks it over many seeds, steps and episodes).

Sources: ``gymnasium/envs/classic_control/{cartpole,acrobot,mountain_car,pendulum}.py`` (gymnasium 1.x,
https://github.com/Farama-Foundation/Gymnasium/tree/main/gymnasium/envs/classic_control).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from sparse_rl.registry import Registry

# gymnasium id -> batched dynamics; a spec with kwargs (other physics) is stepped by gymnasium itself
CLASSIC_DYNAMICS: Registry[type[ClassicDynamics]] = Registry("batched classic-control env")


class ClassicDynamics:
    """One classic-control env's ``step`` over a batch; ``env`` is an unwrapped gymnasium instance (its constants)."""

    state_dim: ClassVar[int]

    def __init__(self, env: Any) -> None:
        self.env = env

    def supported(self) -> str | None:
        """Why this instance's settings are not the ones reproduced here (``None``: they are)."""
        return None

    def step(self, state: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(next state ``[n, d]`` float64, observations ``[n, obs]``, rewards ``[n]`` float64, terminated ``[n]``)."""
        raise NotImplementedError


@CLASSIC_DYNAMICS.register("CartPole-v1")
class CartPole(ClassicDynamics):
    """``CartPoleEnv.step`` (Barto, Sutton & Anderson 1983; gymnasium ``cartpole.py``)."""

    state_dim = 4

    def supported(self) -> str | None:
        return "sutton_barto_reward=True" if self.env._sutton_barto_reward else None

    def step(self, state, actions):
        e = self.env
        x, x_dot, theta, theta_dot = state.T
        force = np.where(actions == 1, e.force_mag, -e.force_mag)
        costheta = np.cos(theta)
        sintheta = np.sin(theta)
        temp = (force + e.polemass_length * np.square(theta_dot) * sintheta) / e.total_mass
        thetaacc = (e.gravity * sintheta - costheta * temp) / (
            e.length * (4.0 / 3.0 - e.masspole * np.square(costheta) / e.total_mass)
        )
        xacc = temp - e.polemass_length * thetaacc * costheta / e.total_mass
        if e.kinematics_integrator == "euler":
            x = x + e.tau * x_dot
            x_dot = x_dot + e.tau * xacc
            theta = theta + e.tau * theta_dot
            theta_dot = theta_dot + e.tau * thetaacc
        else:  # semi-implicit euler
            x_dot = x_dot + e.tau * xacc
            x = x + e.tau * x_dot
            theta_dot = theta_dot + e.tau * thetaacc
            theta = theta + e.tau * theta_dot
        new_state = np.stack((x, x_dot, theta, theta_dot), axis=1)
        terminated = (x < -e.x_threshold) | (x > e.x_threshold)
        terminated |= (theta < -e.theta_threshold_radians) | (theta > e.theta_threshold_radians)
        rewards = np.ones(len(x))  # 1.0 every step, the step that ends the episode included
        return new_state, new_state.astype(np.float32), rewards, terminated


@CLASSIC_DYNAMICS.register("Acrobot-v1")
class Acrobot(ClassicDynamics):
    """``AcrobotEnv.step``: RK4 over ``_dsdt`` (Sutton 1996; gymnasium ``acrobot.py``), the state augmented by the torque."""

    state_dim = 4

    def supported(self) -> str | None:
        return "torque_noise_max > 0" if self.env.torque_noise_max > 0 else None

    def _dsdt(self, s_augmented: np.ndarray) -> np.ndarray:
        e = self.env
        m1, m2, l1 = e.LINK_MASS_1, e.LINK_MASS_2, e.LINK_LENGTH_1
        lc1, lc2, I1, I2 = e.LINK_COM_POS_1, e.LINK_COM_POS_2, e.LINK_MOI, e.LINK_MOI
        g = 9.8  # gymnasium's _dsdt literal
        a = s_augmented[:, -1]
        theta1, theta2, dtheta1, dtheta2 = s_augmented[:, 0], s_augmented[:, 1], s_augmented[:, 2], s_augmented[:, 3]
        cos, sin, pi = np.cos, np.sin, np.pi
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * cos(theta2)) + I1 + I2
        d2 = m2 * (lc2**2 + l1 * lc2 * cos(theta2)) + I2
        phi2 = m2 * lc2 * g * cos(theta1 + theta2 - pi / 2.0)
        phi1 = (
            -m2 * l1 * lc2 * dtheta2**2 * sin(theta2)
            - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * sin(theta2)
            + (m1 * lc1 + m2 * l1) * g * cos(theta1 - pi / 2)
            + phi2
        )
        if e.book_or_nips == "nips":
            ddtheta2 = (a + d2 / d1 * phi1 - phi2) / (m2 * lc2**2 + I2 - d2**2 / d1)
        else:
            ddtheta2 = (a + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * sin(theta2) - phi2) / (m2 * lc2**2 + I2 - d2**2 / d1)
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return np.stack((dtheta1, dtheta2, ddtheta1, ddtheta2, np.zeros_like(a)), axis=1)

    @staticmethod
    def _wrap(x: np.ndarray, m: float, big_m: float) -> np.ndarray:
        diff = big_m - m
        while (x > big_m).any():
            x = np.where(x > big_m, x - diff, x)
        while (x < m).any():
            x = np.where(x < m, x + diff, x)
        return x

    def step(self, state, actions):
        e = self.env
        torque = np.asarray(e.AVAIL_TORQUE, dtype=np.float64)[actions]
        y0 = np.concatenate((state, torque[:, None]), axis=1)
        dt = e.dt  # rk4 over t = [0, dt]: t[1] - t[0]
        dt2 = dt / 2.0
        k1 = self._dsdt(y0)
        k2 = self._dsdt(y0 + dt2 * k1)
        k3 = self._dsdt(y0 + dt2 * k2)
        k4 = self._dsdt(y0 + dt * k3)
        ns = (y0 + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4))[:, :4]
        ns[:, 0] = self._wrap(ns[:, 0], -np.pi, np.pi)
        ns[:, 1] = self._wrap(ns[:, 1], -np.pi, np.pi)
        ns[:, 2] = np.minimum(np.maximum(ns[:, 2], -e.MAX_VEL_1), e.MAX_VEL_1)
        ns[:, 3] = np.minimum(np.maximum(ns[:, 3], -e.MAX_VEL_2), e.MAX_VEL_2)
        s0, s1 = ns[:, 0], ns[:, 1]
        terminated = -np.cos(s0) - np.cos(s1 + s0) > 1.0
        rewards = np.where(terminated, 0.0, -1.0)
        obs = np.stack((np.cos(s0), np.sin(s0), np.cos(s1), np.sin(s1), ns[:, 2], ns[:, 3]), axis=1).astype(np.float32)
        return ns, obs, rewards, terminated


@CLASSIC_DYNAMICS.register("MountainCar-v0")
class MountainCar(ClassicDynamics):
    """``MountainCarEnv.step`` (Moore 1990; gymnasium ``mountain_car.py``); its ``math.cos`` is kept."""

    state_dim = 2

    def step(self, state, actions):
        e = self.env
        position, velocity = state[:, 0], state[:, 1]
        cos_3p = np.fromiter(map(math.cos, (3 * position).tolist()), dtype=np.float64, count=len(position))
        velocity = velocity + ((actions - 1) * e.force + cos_3p * (-e.gravity))
        velocity = np.clip(velocity, -e.max_speed, e.max_speed)
        position = position + velocity
        position = np.clip(position, e.min_position, e.max_position)
        velocity = np.where((position == e.min_position) & (velocity < 0), 0.0, velocity)
        terminated = (position >= e.goal_position) & (velocity >= e.goal_velocity)
        new_state = np.stack((position, velocity), axis=1)
        return new_state, new_state.astype(np.float32), np.full(len(position), -1.0), terminated


@CLASSIC_DYNAMICS.register("Pendulum-v1")
class Pendulum(ClassicDynamics):
    """``PendulumEnv.step`` (gymnasium ``pendulum.py``): the torque stays in the action's dtype, as there."""

    state_dim = 2

    def step(self, state, actions):
        e = self.env
        th, thdot = state[:, 0], state[:, 1]
        g, m, l, dt = e.g, e.m, e.l, e.dt  # noqa: E741  (gymnasium's names)
        u = np.clip(actions.reshape(len(th), -1), -e.max_torque, e.max_torque)[:, 0]
        costs = (((th + np.pi) % (2 * np.pi)) - np.pi) ** 2 + 0.1 * thdot**2 + 0.001 * (u**2)
        newthdot = thdot + (3 * g / (2 * l) * np.sin(th) + 3.0 / (m * l**2) * u) * dt
        newthdot = np.clip(newthdot, -e.max_speed, e.max_speed)
        newth = th + newthdot * dt
        new_state = np.stack((newth, newthdot), axis=1)
        obs = np.stack((np.cos(newth), np.sin(newth), newthdot), axis=1).astype(np.float32)
        return new_state, obs, -costs, np.zeros(len(th), dtype=bool)
