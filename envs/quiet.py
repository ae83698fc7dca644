"""Silence two known, harmless messages at their source, and nothing else.

- MuJoCo prints ``WARNING: compiler attribute 'settotalmass' is deprecated ...`` (and appends it to
  ``MUJOCO_LOG.TXT``) each time it compiles a model that uses the attribute: gymnasium's HalfCheetah and
  dm-control's cheetah both do. We cannot edit their model files without changing the physics, so
  :func:`install_mujoco_warning_filter` installs a MuJoCo warning handler that drops exactly that message and
  passes every other MuJoCo warning on (to the handler installed before, else to stderr).
- dm-control picks an OpenGL backend when imported and tries GLFW first, which warns
  ``X11: The DISPLAY environment variable is missing`` on a headless machine. Training never renders, so
  :func:`headless_dm_control` sets ``MUJOCO_GL=disable`` when there is no display, no renderer was asked
  for and the user chose no backend (an explicit ``MUJOCO_GL`` always wins).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

SILENCED_MUJOCO_WARNINGS = ("compiler attribute 'settotalmass' is deprecated",)  # gymnasium/dm-control assets


def mujoco_warning_handler(previous: Callable[[str], None] | None) -> Callable[[str], None]:
    """A MuJoCo warning handler that drops :data:`SILENCED_MUJOCO_WARNINGS` and forwards the rest."""

    def handle(message: str) -> None:  # called by MuJoCo's C code
        if message.startswith(SILENCED_MUJOCO_WARNINGS):
            return
        if previous is not None:
            previous(message)
        else:
            print(f"WARNING: {message}", file=sys.stderr)

    handle.silences = SILENCED_MUJOCO_WARNINGS  # type: ignore[attr-defined]  # marks the handler as ours
    return handle


def install_mujoco_warning_filter() -> None:
    """Wrap MuJoCo's current (process-global) warning handler in :func:`mujoco_warning_handler`, once.

    Call it after importing dm-control, which installs its own handler (absl logging) on import.
    """
    import mujoco

    current = mujoco.get_mju_user_warning()
    if not hasattr(current, "silences"):
        mujoco.set_mju_user_warning(mujoco_warning_handler(current))


def headless_dm_control(render_mode: str | None) -> None:
    """Before dm-control is first imported: no OpenGL backend when nothing will be rendered and there is no display."""
    if render_mode is None and "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "disable"
