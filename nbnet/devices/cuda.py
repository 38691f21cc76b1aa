"""The CUDA device: Numba device arrays and the @cuda.jit twins in ``nbnet.kernels.cuda``,
under the names every device module exposes (see ``nbnet.devices``). Importing this module
imports numba.cuda; ``nbnet.devices.resolve`` does so only after checking a GPU is usable."""

import numpy as np
from numba import cuda as _cuda

from ..kernels import cuda as _kernels
from ..kernels.cuda.activations import activation_backward, bias_activation_forward  # noqa: F401
from ..kernels.cuda.conv import (conv2d_backward, direct_conv_backward, direct_conv_forward,  # noqa: F401
                                direct_conv_maxpool_backward, direct_conv_maxpool_forward, im2col)
from ..kernels.cuda.dense import dense_backward  # noqa: F401
from ..kernels.cuda.depthwise import (depthwise_backward, depthwise_forward, grouped_col2im,  # noqa: F401
                                     grouped_conv_backward, grouped_conv_forward, grouped_im2col)
from ..kernels.cuda.dropout import apply_mask  # noqa: F401
from ..kernels.cuda.gemm import matmul  # noqa: F401
from ..kernels.cuda.losses import (binary_crossentropy_from_probabilities, crossentropy_from_probabilities,  # noqa: F401
                                   huber, mean_absolute_error, mean_absolute_percentage_error, mean_squared_error,
                                   mean_squared_logarithmic_error, sigmoid_crossentropy_from_logits,
                                   softmax_crossentropy_from_logits)
from ..kernels.cuda.merging import (concat_backward, concat_forward, merge_add, merge_divide,  # noqa: F401
                                   merge_maximum, merge_minimum, merge_multiply, merge_route, merge_subtract)
from ..kernels.cuda.normalization import (batchnorm_backward, batchnorm_infer, batchnorm_infer_backward,  # noqa: F401
                                          batchnorm_train_forward, update_moving_averages)
from ..kernels.cuda.onnx_ops import (binary_backward, binary_backward_same, binary_forward, clip_backward,  # noqa: F401
                                    clip_forward, log_softmax_backward, log_softmax_forward, permute_forward,
                                    take_backward, take_forward)
from ..kernels.cuda.optim import (adadelta_update, adagrad_update, adam_update, adamax_update,  # noqa: F401
                                  clip_by_value, clip_segments_by_norm, decay_weights, nadam_update, rmsprop_update,
                                  sgd_update)
from ..kernels.cuda.padding import zero_pad_backward, zero_pad_forward  # noqa: F401
from ..kernels.cuda.pool import (avgpool_backward, avgpool_forward, bias_activation_maxpool,  # noqa: F401
                                maxpool_activation_backward, maxpool_backward, maxpool_forward)
from ..kernels.cuda.regularization import penalty_and_gradient  # noqa: F401
from ..kernels.cuda.flip import flip_images  # noqa: F401
from ..kernels.cuda.rescaling import scale_shift  # noqa: F401
from ..kernels.cuda.upsampling import upsample_backward, upsample_forward  # noqa: F401
from ..kernels.cuda.training import add_into, check_finite, count_correct, fill_zero, gather_rows  # noqa: F401

name = "cuda"
# Conv2D's Winograd and planar passes (see nbnet/kernels/winograd.py and planar.py) are
# the CPU's alone: on the GPU those convs run as im2col and the tiled GEMM.
conv3x3_maxpool_forward = conv3x3_maxpool_backward = conv3x3_forward = conv3x3_backward = None
conv5x5_forward = conv5x5_backward = None
planar_conv_forward = planar_conv_backward = None
planar_block_forward = planar_block_input_gradient = planar_block_kernel_gradient = None
implicit_conv_forward = implicit_conv_backward = None
implicit_conv_maxpool_forward = implicit_conv_maxpool_backward = None
# Add runs the activation after it in its own pass on the CPU only (layers/merging.py).
merge_add_activation = activation_gradient_copies = None
# BatchNormalization runs a max pool after it in its own pass on the CPU only (layers/normalization.py).
batchnorm_pool_train_forward = batchnorm_pool_infer = batchnorm_pool_backward = batchnorm_pool_infer_backward = None
dense_forward = None  # Dense runs its matmul, then bias_activation_forward
fold_norm = None  # BatchNormalization folds into the layer before it on the CPU only (NormFoldingMixin.forward_folded)
# GlobalAveragePooling2D takes the average pool's kernels on the GPU (one window, the image).
global_avgpool_forward = global_avgpool_backward = None
# Depthwise convs add their bias and run their activation in a pass of its own on the GPU.
depthwise_activation_forward = None
_nothing = {}


def workers():
    """Rows of the CPU's per-thread weight-gradient scratch: the GPU accumulates in place."""
    return 0


def empty(shape, dtype=np.float32):
    return _cuda.device_array(shape, dtype=dtype)


def zeros(shape, dtype=np.float32):
    return _cuda.to_device(np.zeros(shape, dtype))


def to_device(array):
    return _cuda.to_device(np.ascontiguousarray(array))


def to_host(array):
    return array.copy_to_host()


def copy(source, out):
    """out[...] = source (same shape, both on the GPU)."""
    out.copy_to_device(source)


def upload(host, out):
    """Copy the host array ``host`` into ``out``, a device array of the same shape."""
    out.copy_to_device(np.ascontiguousarray(host))


def copy_to_host(array, out):
    array.copy_to_host(out)


def nothing(dtype, ndim=1):
    """A zero-length device array: the 'no bias' / 'no labels' argument of the kernels."""
    if ndim == 1:
        return _kernels.empty(dtype)
    key = (np.dtype(dtype).str, ndim)
    if key not in _nothing:
        _nothing[key] = _cuda.device_array((0,) * ndim, dtype=dtype)
    return _nothing[key]


def available_memory():
    """Free bytes of GPU memory, or None where unknown (the simulator)."""
    try:
        free, _ = _cuda.current_context().get_memory_info()
        return int(free)
    except Exception:
        return None
