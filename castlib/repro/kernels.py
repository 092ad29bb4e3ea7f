"""A Jupyter kernel that runs in the current Python environment, for papermill batches.

Jupyter resolves a kernel *name* through kernel specs in the user's, the environment's and the
system's folders, in that order, so a name such as ``python3`` can start another environment's
interpreter (a user-wide ``python3`` spec wins over the environment's own). Batch runs must
execute in the environment that runs them: `CurrentEnvKernelManager` starts
``sys.executable -m ipykernel_launcher`` whatever specs are installed, and nothing is written
to the user's Jupyter folders. (nbval's ``--nbval-current-env`` does the same for tests.)
"""

from __future__ import annotations

import sys

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from traitlets import default

__all__ = ["CURRENT_ENV_KERNEL", "CurrentEnvKernelManager", "current_env_kernel_spec"]

#: The name recorded for runs executed by `CurrentEnvKernelManager`.
CURRENT_ENV_KERNEL = "current-env"


def current_env_kernel_spec() -> KernelSpec:
    """An ipykernel spec whose interpreter is ``sys.executable``."""
    return KernelSpec(
        argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        display_name=f"Python 3 ({sys.executable})",
        language="python",
    )


class _CurrentEnvSpecs(KernelSpecManager):
    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:  # noqa: ARG002 - any name
        return current_env_kernel_spec()


class CurrentEnvKernelManager(AsyncKernelManager):
    """An `AsyncKernelManager` (the class nbclient and papermill use) that always starts the
    current interpreter's ipykernel."""

    @default("kernel_spec_manager")
    def _current_env_specs(self) -> KernelSpecManager:
        return _CurrentEnvSpecs(parent=self)
