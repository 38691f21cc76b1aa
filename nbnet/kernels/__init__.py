"""Numba kernels: plain functions over NumPy arrays, grouped by layer, one module per layer family.

Kernels allocate with the dtype of their inputs (float32 in training, float64 in the
gradient-check reference path), so each compiles once per dtype and rank, never per shape.
Nothing here compiles at import: Numba compiles on first call and caches to disk (cache=True).
"""

# Fixed chunk count for parallel reductions: partial sums per chunk, then a serial sum.
# A fixed count (not the thread count) keeps results bit-identical whatever the threads.
REDUCTION_CHUNKS = 16


def add_partials(partial, total):
    """total += partial[0] + partial[1] + ..., one chunk's partial sums after another (each
    reshaped to ``total``'s shape): the same bits whatever the threads that made them."""
    for part in partial:
        total += part.reshape(total.shape)


def contiguous(*arrays):
    """Whether every array given (None skipped) is C-contiguous: a kernel call recorded for
    an inference program (a function's ``replayed_as``) must name the arrays themselves,
    not a copy made while recording."""
    return all(array is None or array.flags.c_contiguous for array in arrays)


def host_cpu_name():
    """LLVM's name for this machine's CPU ("znver4" on the AMD EPYC of sessions 1-14,
    "rocketlake" on the Intel Xeon of sessions 15-22, "znver3" on the AMD EPYC of session
    23): the size rules that were measured to differ between CPUs key on it (see is_zen4)."""
    from llvmlite import binding

    return binding.get_host_cpu_name()


def is_zen4(cpu_name):
    """Whether LLVM's ``cpu_name`` is AMD's Zen 4, where the Winograd size rules were first
    measured; other CPUs take the rules measured on the Intel Xeon, which an AMD EPYC of
    Zen 3 measured alike (see winograd.host_f4_max_products, winograd5x5.min_channel_pairs)."""
    return cpu_name == "znver4"


def l2_cache_bytes(folder="/sys/devices/system/cpu/cpu0/cache"):
    """One core's L2 cache, from Linux's sysfs; 1 MiB where it cannot be read (other
    systems, containers without sysfs)."""
    from pathlib import Path

    try:
        for index in sorted(Path(folder).glob("index*")):
            if (index / "level").read_text().strip() == "2" and (index / "type").read_text().strip() != "Instruction":
                size = (index / "size").read_text().strip().upper()
                scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
                return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return 1 << 20
