"""How many images a forward pass on a CPU takes at once.

On a CPU a network whose layers' outputs are large runs slower an image on large batches: a
batch's activations no longer fit the cores' caches and every layer streams them from memory.
On the AMX machine of docs/benchmarks.md (2 MB of L2 a core), the heap kept as the workers keep
it, one torch thread ran the small CNN at 64 px (its widest layer output 512 kB an image) at
1,523 images/s on batches of 16 and 1,063 on the default 64, ResNet-50 at 224 px (1.5 MB) at
41.3 on 8 and 30.9 on 32; two threads 2,679 and 2,078, 67.8 and 55.9; the small CNN at 32 px
(128 kB) ran faster on 64 than on 8. So every forward pass on a CPU (a replica's, the scoring
process's on cached pixels or fed by decode processes) takes at most :func:`cpu_pass` images:
as many as keep the widest layer output of the pass within ``CACHE_MULTIPLE`` times the L2
cache of a core, never fewer than ``MIN_PASS`` (below which a pass's fixed costs weigh),
never more than ``workers.batch_size``. The widest output is measured once a model, input
size and dtype, on one blank image, with forward hooks; where it cannot be (a TorchScript
file, a model failing on a blank image) batches are run whole. A GPU's passes are not cut.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

import torch
from torch import nn

from workers.devices import torch_threads

MIN_PASS = 8
"""The fewest images a forward pass on a CPU is cut down to."""
CACHE_MULTIPLE = 4
"""A pass's widest layer output may fill this many L2 caches (fitted on the machine above:
the small CNN's best passes held 8 MB of it, ResNet-50's 12-25 MB; 32-50 MB ran at 0.7-0.8x)."""
DEFAULT_L2_BYTES = 2**20
"""The L2 cache assumed where Linux does not tell it."""
_CPU_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")
_widest: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, object], int | None]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def l2_bytes(folder: Path = _CPU_CACHE) -> int:
    """The first CPU's L2 cache in bytes, as Linux's sysfs tells it (``DEFAULT_L2_BYTES``
    where it does not)."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    for index in sorted(folder.glob("index*")):
        try:
            if (index / "level").read_text().strip() != "2":
                continue
            size = (index / "size").read_text().strip()
            return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
        except (OSError, ValueError, IndexError):  # unreadable, or not a size
            continue
    return DEFAULT_L2_BYTES


def widest_output(module: nn.Module, size: int, dtype: torch.dtype | None) -> int | None:
    """Bytes of the largest tensor any of ``module``'s layers outputs for one ``size`` image
    in ``dtype`` (autocast's; None: float32), measured once and remembered; None where it
    cannot be measured."""
    key = (size, dtype)
    with _lock:
        known = _widest.setdefault(module, {})
        if key not in known:
            known[key] = _measured(module, size, dtype)
        return known[key]


def _measured(module: nn.Module, size: int, dtype: torch.dtype | None) -> int | None:
    if isinstance(module, torch.jit.ScriptModule):  # takes no forward hooks
        return None
    most = 0

    def note(_layer: nn.Module, _inputs: object, output: object) -> None:
        nonlocal most
        if isinstance(output, torch.Tensor):
            most = max(most, output.numel() * output.element_size())

    leaves = [layer for layer in module.modules() if next(layer.children(), None) is None]
    hooks = [layer.register_forward_hook(note) for layer in leaves]
    blank = torch.zeros((1, 3, size, size)).contiguous(memory_format=torch.channels_last)
    try:
        with (
            torch_threads(1),  # as a replica runs it
            torch.inference_mode(),
            torch.autocast("cpu", dtype=dtype, enabled=dtype is not None),
        ):
            module(blank)
    except Exception:  # the model's own trouble: the batch is run whole, as before
        return None
    finally:
        for hook in hooks:
            hook.remove()
    return most or None


def cpu_pass(module: nn.Module, size: int, dtype: torch.dtype | None, batch_size: int) -> int:
    """The images a forward pass on a CPU takes at once (see the module)."""
    if batch_size <= MIN_PASS:
        return batch_size
    widest = widest_output(module, size, dtype)
    if widest is None:
        return batch_size
    return max(MIN_PASS, min(batch_size, CACHE_MULTIPLE * l2_bytes() // widest))
