"""Where a model computes: the CPU (``nbnet.devices.cpu``) or an NVIDIA GPU
(``nbnet.devices.cuda``).

A device is a module exposing the same names: array helpers (``empty``, ``zeros``,
``to_device``, ``to_host``, ``copy``, ``upload``, ``copy_to_host``, ``nothing``,
``fill_zero``, ``available_memory``) and every kernel the layers, losses,
optimizers and the training loop launch, with one signature on both devices. Layers and
models hold the module as ``ops`` and never import kernels themselves, so one forward,
backward and training step serve both devices.

Only the kernels' loss/penalty totals take a ``total_out`` (a float64 array of shape (1,)
on the device), and the optimizer kernels a ``halt`` flag: on the GPU these keep a step's
results on the device until the loop reads them back, once per log interval.
"""

from ..errors import NbnetError

NAMES = ("cpu", "cuda", "auto")
_ALIASES = {"gpu": "cuda"}


def normalise(device):
    """The device's canonical name, or a clear error for an unknown one."""
    name = _ALIASES.get(str(device).lower(), str(device).lower())
    if name not in NAMES:
        raise NbnetError(f"Unknown device {device!r}; nbnet runs on 'cpu', 'cuda' (an NVIDIA GPU) or 'auto' "
                         "(the GPU when one is usable, else the CPU).")
    return name


def resolve(device):
    """(ops module, one line saying which device runs and why) for 'cpu', 'cuda' or 'auto'.
    'cuda' without a usable GPU is an error naming what is missing; under Numba's CUDA
    simulator (NUMBA_ENABLE_CUDASIM=1) 'cuda' runs the kernels in the simulator, which is
    how the tests check the GPU path without a GPU, while 'auto' picks the CPU."""
    name = normalise(device)
    if name == "cpu":
        from . import cpu

        return cpu, "Training on the CPU."
    from ..kernels.cuda import available

    usable, reason = available()
    if usable:
        from . import cuda

        return cuda, f"Training on the {reason}."
    if name == "cuda" and _simulated():
        from . import cuda

        return cuda, "Training on Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1): correct but very slow."
    if name == "cuda":
        raise NbnetError(f"device='cuda' was requested, but {reason}. Train on the CPU with device='cpu', "
                         "or device='auto' to use a GPU only when one is usable.")
    from . import cpu

    return cpu, f"Training on the CPU (device='auto': {reason})."


def _simulated():
    from numba import config

    return bool(getattr(config, "ENABLE_CUDASIM", False))
