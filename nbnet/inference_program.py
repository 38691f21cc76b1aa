"""A small batch's inference pass, recorded once per input shape and replayed.

On one image the layers' Python (choosing a pass, fetching buffers, the plan's loop)
took longer than their kernels: a one-image forward of tools/bench_zoo.py's seed CNN spent
145 us, a replay of its 7 kernel calls 86. Those calls are the same on every call of a
given input shape: the same kernels on the same weight arrays and the same buffers. So
the second forward of a shape (a one-off predict records nothing) runs with every
layer's device module swapped for a recorder, which notes each call (function,
arguments) as it passes it on; later calls copy their inputs into the recorded input
arrays and make the same calls again, on one Numba thread or all, whichever the
program measured faster (``_fastest``).

A program is only kept once it has shown that it computes what the layers compute:
replayed on other inputs (the recorded ones rearranged), with the weights changed in
place (rearranged and scaled, then restored), it must give the same bits as the layers'
own forward. A layer that computes part of its output outside the device module, from
the input or from the weights, fails that proof, and the model then keeps the layers'
path for that shape. Weight arrays replaced rather than written (a device move, a dtype
change) retire the program (``current``).
"""

import time

import numba
import numpy as np

from .threads import numba_thread_count

# The largest batch replayed: the Python a replay saves is the same at any batch, the
# kernels' time grows with it.
RECORD_MAX_SAMPLES = 16
# Models with more weights than this are not recorded: the proof copies every weight once,
# and the Python a replay saves (some 100 us) is lost in such a model's products anyway.
RECORD_MAX_WEIGHT_BYTES = 64 << 20
# Functions of the device module that allocate or answer, rather than compute: not replayed.
_NOT_REPLAYED = frozenset({"empty", "zeros", "nothing", "workers", "to_device", "to_host"})


class _Recorder:
    """Stands in for a device module: each computing call is noted, then made. A function
    with a ``replayed_as`` attribute is noted as the call (or list of calls) it comes down
    to for these arguments (its own Python choices, made on shapes and codes, skipped in
    replays: the deep MLP's one-image predict, 14 such calls, 91-95 -> 79-91 us)."""

    def __init__(self, ops, calls):
        self._ops, self._calls = ops, calls

    def __getattr__(self, name):
        function = getattr(self._ops, name)
        if not callable(function) or name in _NOT_REPLAYED:
            return function

        def noted(*args, **kwargs):
            resolve = getattr(function, "replayed_as", None)
            resolved = (resolve and resolve(*args, **kwargs)) or (function, args, kwargs)
            if isinstance(resolved, list):  # the several calls a function comes down to
                self._calls.extend(resolved)
            else:
                self._calls.append(resolved)
            return function(*args, **kwargs)

        return noted


# BLAS products below this many multiply-adds run on one thread whatever BLAS's thread
# count, as measured with OpenBLAS 0.3.31 (the process's CPU time against wall time, two
# BLAS threads allowed: 1 x 784 x 128, 1 x 512 x 512, 1 x 3136 x 10 and 4 x 784 x 128 one
# thread's; 16 x 784 x 128 two). Another BLAS may split sooner: a speed risk, no more.
BLAS_ONE_THREAD_MACS = 1 << 17
# The device module's functions that call BLAS themselves (products split into sgemm jobs
# or run on worker threads, Winograd's position products, grouped convs' products): a
# program calling one holds BLAS to one thread. A new function that calls BLAS belongs here.
_BLAS_CALLERS = frozenset({"matmul", "conv3x3_forward", "conv3x3_maxpool_forward", "conv5x5_forward",
                           "grouped_conv_forward", "conv2d_backward", "conv3x3_backward", "conv3x3_maxpool_backward",
                           "conv5x5_backward", "dense_backward", "depthwise_backward", "grouped_conv_backward"})


class InferenceProgram:
    def __init__(self, inputs, calls, outputs, weights, threads):
        self.inputs, self.calls, self.outputs = inputs, calls, outputs
        self._weights = weights  # (store, key, array): the weight arrays the calls read
        self.threads = threads  # the Numba threads its kernels run on
        # Whether every BLAS product it makes is too small for BLAS's own threads: predict
        # then skips holding BLAS to one thread around the run (threadpoolctl's calls, some
        # 11-20 us of a one-image predict: tools/ab_zoo.sh, two rounds, us, seed_cnn 155 /
        # 154 -> 132 / 135, strided 105 / 104 -> 83 / 77, resnet_small 173 / 162 -> 152 / 139).
        self.blas_single = all(_blas_single(function, args) for function, args, _ in calls)

    def current(self):
        """Whether the layers still hold the weight arrays the calls were recorded with."""
        for store, key, array in self._weights:
            if store.get(key) is not array:
                return False
        return True

    def run(self, inputs):
        """The outputs for ``inputs`` (arrays of the recorded shapes), in the program's
        own buffers: copy them out before the next run."""
        for staged, given in zip(self.inputs, inputs):
            np.copyto(staged, given)
        before = numba_thread_count()
        if before != self.threads:
            numba.set_num_threads(self.threads)
        try:
            for function, args, kwargs in self.calls:
                function(*args, **kwargs)
        finally:
            if before != self.threads:
                numba.set_num_threads(before)
        return self.outputs


def _blas_single(function, args):
    """Whether the call ``function(*args)`` leaves BLAS's own threads idle."""
    if function is np.matmul:
        return args[0].shape[0] * args[0].shape[1] * args[1].shape[1] < BLAS_ONE_THREAD_MACS
    return getattr(function, "__name__", None) not in _BLAS_CALLERS


# Programs' marks of a batch shape met once: recorded when met again.
_SEEN = object()


class Programs:
    """A plan's programs, kept by the batch's shapes and types and the Numba threads its
    forward runs from: a proven program, None where the proof failed (the layers' pass
    runs), or the mark of a shape met once (a one-off predict records nothing)."""

    def __init__(self, plan):
        self._plan, self._marks = plan, {}

    def current(self, xs, threads):
        """The program that replays ``xs``, if one is recorded and holds the layers' weight
        arrays still; else None."""
        program = self._marks.get(_key(xs, threads))
        return program if isinstance(program, InferenceProgram) and program.current() else None

    def forward(self, xs, forward, ops, outer_threads):
        """forward(xs) (the layers' inference pass, the Numba threads now set, ``outer_threads``
        before one sample lowered them): replayed, recorded (a shape met a second time,
        its program running on whichever of the two counts it measured faster), or run."""
        threads = numba_thread_count()
        key = _key(xs, threads)
        mark = self._marks.get(key)
        if isinstance(mark, InferenceProgram):
            if mark.current():
                return mark.run(xs)
            mark = _SEEN  # its weights were replaced: record again
        if mark is _SEEN and distinct(xs):
            program = self._marks[key] = record(self._plan, forward, xs, ops,
                                                sorted({threads, max(outer_threads, threads)}))
            if program is not None:
                return program.run(xs)
        elif key not in self._marks:
            self._marks[key] = _SEEN
        return forward(xs)

    def recorded(self):
        return [mark for mark in self._marks.values() if isinstance(mark, InferenceProgram)]

    def refused(self):
        """How many shapes keep the layers' pass because their program failed the proof."""
        return sum(mark is None for mark in self._marks.values())

    def __len__(self):
        return len(self._marks)  # the shapes met


def _key(xs, threads):
    return tuple((x.shape, x.dtype.str) for x in xs) + (threads,)


def record(plan, forward, inputs, ops, thread_counts):
    """A proven program for ``forward`` (the plan's inference forward: a function of a list
    of input arrays) on inputs shaped as ``inputs`` (which must be ``distinct``), or None
    where the layers compute outside ``ops`` or hold over RECORD_MAX_WEIGHT_BYTES of
    weights. It runs on whichever of ``thread_counts`` (Numba threads; the first is the
    count now set) ran it fastest."""
    layers = plan.call_objects()
    # Call copies of a layer share its stores: each once.
    stores = list({id(store): store for layer in layers for store in (layer.params, layer.state)}.values())
    weights = [(store, key, array) for store in stores for key, array in store.items()]
    if sum(array.nbytes for _, _, array in weights) > RECORD_MAX_WEIGHT_BYTES:
        return None
    staged = [np.array(x, order="C") for x in inputs]
    calls = []
    recorder = _Recorder(ops, calls)
    devices = [layer.ops for layer in layers]
    for layer in layers:
        layer.ops = recorder
    try:
        outputs = forward(staged)
    finally:
        for layer, device in zip(layers, devices):
            layer.ops = device
    program = InferenceProgram(staged, calls, outputs, weights, thread_counts[0])
    if not _proven(program, forward, inputs, weights):
        return None
    program.threads = _fastest(program, inputs, thread_counts)
    return program


def _fastest(program, inputs, thread_counts, rounds=5, runs=8):
    """The thread count that ran ``program`` fastest: per round and count, ``runs`` runs one
    after another (as a predict loop makes them) after one untimed run (the switch of
    counts wakes or parks a thread), the best round's mean. Single runs alternating
    between the counts (best of 5) chose one thread for the MLP 784-512-512-10, whose
    program then ran 95 us against 69 on two; 3 rounds of 5 runs still chose it in 2 of 4
    fresh processes, 5 rounds of 8 in none of 5 (90 runs once per shape: 18 ms for the MLP,
    60 for kaggle_bn, measured around the call).
    One sample's small kernels lose by sharing, its large ones gain: one image, 2 cores, us,
    one thread -> two (the implicit GEMM then splitting the image's pixels): cifar_bn 440
    -> 360, pointwise_gap 343 -> 270, seed_cnn 162 -> 155; mlp 250 -> 300, lenet5 120 ->
    128, resnet_small 222 -> 235 (tools/bench_zoo.py's networks)."""
    if len(thread_counts) == 1:
        return thread_counts[0]
    best = {}
    # Timed from the thread count replays start from (training._predict_prepared runs them
    # outside any lowering: all of them), as each run switches to its own count and back.
    # Timed from one thread (the recording predict's), every two-thread run paid two
    # switches that its replays do not: the MLP 784-512-512-10 chose one thread and then
    # ran 161 us a predict against 106 on two (kaggle_bn chose two either way).
    before = numba_thread_count()
    numba.set_num_threads(max(thread_counts))
    try:
        for _ in range(rounds):
            for count in thread_counts:
                program.threads = count
                program.run(inputs)
                started = time.perf_counter()
                for _ in range(runs):
                    program.run(inputs)
                seconds = (time.perf_counter() - started) / runs
                best[count] = min(best.get(count, seconds), seconds)
    finally:
        numba.set_num_threads(before)
    return min(thread_counts, key=best.get)


def distinct(inputs):
    """Whether ``inputs`` can prove a program: rearranged, they differ (a uniform batch, all
    zeros say, would not tell a program that ignored its input apart)."""
    return not all(np.array_equal(_rearranged(x), x) for x in inputs)


def _proven(program, forward, inputs, weights):
    others = [_rearranged(x) for x in inputs]
    originals = [array.copy() for _, _, array in weights]
    try:
        for (_, _, array), original in zip(weights, originals):
            if array.dtype.kind == "f":
                array[...] = np.roll(original.ravel(), 1).reshape(array.shape) * array.dtype.type(0.75)
        # The replay first: the layers' own pass would refresh any buffer they fill
        # outside the device module, and the replay would then read it fresh.
        replayed = [np.array(y) for y in program.run(others)]
        expected = [np.array(y) for y in forward(others)]
    finally:
        for (_, _, array), original in zip(weights, originals):
            array[...] = original
    if not _same(replayed, expected):
        return False
    replayed = [np.array(y) for y in program.run(inputs)]
    return _same(replayed, forward(inputs))


def _same(outputs, others):
    return len(outputs) == len(others) and all(np.array_equal(a, b, equal_nan=True) for a, b in zip(outputs, others))


def _rearranged(array):
    """The same values, each sample's moved along by one place (a token id stays a valid id)."""
    return np.roll(array.reshape(len(array), -1), 1, axis=1).reshape(array.shape)
