"""The CPU device: NumPy arrays and the @njit kernels of ``nbnet.kernels``, under the
names every device module exposes (see ``nbnet.devices``). Host arrays are the CPU's own,
so moving data to and from it costs nothing."""

import numpy as np

from ..kernels import losses as _losses
from ..kernels import normalization as _normalization
from ..kernels import optim as _optim
from ..kernels import pool as _pool
from ..kernels import regularization as _regularization
from ..kernels.activations import activation_backward, bias_activation_forward  # noqa: F401
from ..kernels.conv import (conv2d_backward, direct_conv_backward, direct_conv_forward,  # noqa: F401
                           direct_conv_maxpool_backward, direct_conv_maxpool_forward, im2col)
from ..kernels.dense import dense_backward, dense_forward  # noqa: F401
from ..kernels.depthwise import depthwise_forward as depthwise_activation_forward  # noqa: F401
from ..kernels.depthwise import (depthwise_backward, depthwise_forward, grouped_col2im,  # noqa: F401
                                grouped_conv_backward, grouped_conv_forward, grouped_im2col)
from ..kernels.dropout import apply_mask  # noqa: F401
from ..kernels.flip import flip_images  # noqa: F401
from ..kernels.implicit_gemm import (implicit_conv_backward, implicit_conv_forward,  # noqa: F401
                                     implicit_conv_maxpool_backward, implicit_conv_maxpool_forward)
from ..kernels.matmul import matmul, workers  # noqa: F401
from ..kernels.normalization import (batchnorm_backward, batchnorm_infer, batchnorm_infer_backward,  # noqa: F401
                                     fold_norm, update_moving_averages)
from ..kernels.normalization_pool import (batchnorm_pool_backward, batchnorm_pool_infer,  # noqa: F401
                                            batchnorm_pool_infer_backward, batchnorm_pool_train_forward)
from ..kernels.merging import (activation_gradient_copies, concat_backward, concat_forward, merge_add,  # noqa: F401
                               merge_add_activation, merge_divide, merge_maximum, merge_minimum, merge_multiply,
                               merge_route, merge_subtract)
from ..kernels.onnx_ops import (binary_backward, binary_backward_same, binary_forward, clip_backward,  # noqa: F401
                               clip_forward, log_softmax_backward, log_softmax_forward, permute_forward, take_backward,
                               take_forward)
from ..kernels.padding import zero_pad_backward, zero_pad_forward  # noqa: F401
from ..kernels.planar import planar_conv_backward, planar_conv_forward  # noqa: F401
from ..kernels.planar_blocks import (planar_block_forward, planar_block_input_gradient,  # noqa: F401
                                    planar_block_kernel_gradient)
from ..kernels.pool import (avgpool_backward, avgpool_forward, bias_activation_maxpool,  # noqa: F401
                            global_avgpool_backward, global_avgpool_forward, maxpool_activation_backward,
                            maxpool_forward)
from ..kernels.rescaling import scale_shift  # noqa: F401
from ..kernels.training import add_into, check_finite, count_correct, fill_zero, gather_rows  # noqa: F401
from ..kernels.upsampling import upsample_backward, upsample_forward  # noqa: F401
from ..kernels.winograd import (conv3x3_backward, conv3x3_forward, conv3x3_maxpool_backward,  # noqa: F401
                               conv3x3_maxpool_forward)
from ..kernels.winograd5x5 import conv5x5_backward, conv5x5_forward  # noqa: F401

name = "cpu"
_nothing = {}


# -- arrays ------------------------------------------------------------------------------
def empty(shape, dtype=np.float32):
    return np.empty(shape, dtype)


def zeros(shape, dtype=np.float32):
    return np.zeros(shape, dtype)


def to_device(array):
    return array


def to_host(array):
    return array


def copy(source, out):
    """out[...] = source (same shape, both on this device)."""
    out[...] = source


def upload(host, out):
    """Copy the host array ``host`` into ``out``, an array of this device."""
    out[...] = host


def copy_to_host(array, out):
    out[...] = array


def nothing(dtype, ndim=1):
    """A zero-length array: the 'no bias' / 'no labels' argument of the kernels."""
    key = (np.dtype(dtype).str, ndim)
    if key not in _nothing:
        _nothing[key] = np.zeros((0,) * ndim, dtype)
    return _nothing[key]


def available_memory():
    """Bytes of memory available (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# -- kernels whose signature the GPU's shapes ----------------------------------------------
def maxpool_backward(dy, argmax, ph, pw, sh, sw, pad_top, pad_left, dx):
    """The GPU gathers per input pixel and needs the window; the CPU scatters by argmax."""
    _pool.maxpool_backward(dy, argmax, dx)


def batchnorm_train_forward(x, gamma, beta, epsilon, code, alpha, y, mean_out, variance_out, inv_std=None):
    """Returns the per-channel 1/std (the GPU writes it into ``inv_std``; here it is new)."""
    return _normalization.batchnorm_train_forward(x, gamma, beta, epsilon, code, alpha, y, mean_out, variance_out)


def _keeping_total(kernel):
    """A loss or penalty kernel that also writes its total into ``total_out`` when given."""
    def launch(*args, total_out=None):
        total = kernel(*args)
        if total_out is None:
            return total
        total_out[0] = total
        return total_out
    launch.__name__ = kernel.__name__
    launch.__doc__ = kernel.__doc__
    return launch


def _halting(kernel):
    """An optimizer kernel that changes nothing while ``halt[0]`` is set."""
    def launch(*args, halt=None):
        if halt is None or halt[0] == 0:
            kernel(*args)
    launch.__name__ = kernel.__name__
    launch.__doc__ = kernel.__doc__
    return launch


softmax_crossentropy_from_logits = _keeping_total(_losses.softmax_crossentropy_from_logits)
crossentropy_from_probabilities = _keeping_total(_losses.crossentropy_from_probabilities)
sigmoid_crossentropy_from_logits = _keeping_total(_losses.sigmoid_crossentropy_from_logits)
binary_crossentropy_from_probabilities = _keeping_total(_losses.binary_crossentropy_from_probabilities)
mean_squared_error = _keeping_total(_losses.mean_squared_error)
mean_absolute_error = _keeping_total(_losses.mean_absolute_error)
huber = _keeping_total(_losses.huber)
mean_squared_logarithmic_error = _keeping_total(_losses.mean_squared_logarithmic_error)
mean_absolute_percentage_error = _keeping_total(_losses.mean_absolute_percentage_error)
penalty_and_gradient = _keeping_total(_regularization.penalty_and_gradient)
sgd_update = _halting(_optim.sgd_update)
adam_update = _halting(_optim.adam_update)
rmsprop_update = _halting(_optim.rmsprop_update)
adagrad_update = _halting(_optim.adagrad_update)
adadelta_update = _halting(_optim.adadelta_update)
adamax_update = _halting(_optim.adamax_update)
nadam_update = _halting(_optim.nadam_update)
decay_weights = _halting(_optim.decay_weights)


def clip_by_value(grads, limit, halt=None):
    _optim.clip_by_value(grads, limit)


def clip_segments_by_norm(grads, offsets, max_norm, halt=None):
    _optim.clip_segments_by_norm(grads, offsets, float(max_norm))
