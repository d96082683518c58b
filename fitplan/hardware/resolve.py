"""Which machine a plan is for: named GPUs, a hardware file, a given `Hardware`, or this machine."""
from __future__ import annotations

import os

from ..errors import OptionError
from .machine import Hardware


def resolve_hardware(gpu: str | None = None, hardware: str | os.PathLike | Hardware | None = None) -> Hardware:
    """`gpu` (catalogue names), `hardware` (a file or a `Hardware`), else the machine itself via NVML."""
    if gpu and hardware:
        raise OptionError("give either gpu or hardware, not both", option="gpu")
    if isinstance(hardware, Hardware):
        return hardware
    from .probe import cpu_ram_bytes, probe

    if gpu:
        from .catalogue import hardware_from_gpu_flag

        return hardware_from_gpu_flag(gpu, cpu_ram_bytes())
    if hardware:
        from .catalogue import hardware_from_file

        return hardware_from_file(hardware, cpu_ram_bytes=cpu_ram_bytes())
    return probe()
