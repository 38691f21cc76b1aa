"""Mutation testing: plant realistic bugs in a scratch copy of nbnet, one at a time, and
check that the tests meant to catch each one fail.

    python tools/mutants.py                 # every mutant (baseline first), JSON on stdout
    python tools/mutants.py --list          # the mutants, without running anything
    python tools/mutants.py --only adam_no_epsilon,conv_same_padding_odd_pixel_first
    python tools/mutants.py --jobs 2 --keep

How it works. nbnet/, tests/, models/, pyproject.toml and README.md are copied once into a
temporary directory (one copy per job). First the unmutated baseline runs every selection
there: it must pass, or the tool stops (a red baseline would make every mutant look
caught). Then, per mutant, its edits are applied to the copy (each ``old`` snippet must
occur exactly once in its file, else the tool fails loudly: the list cannot rot
silently), its selected tests run with ``-x -q -p no:cacheprovider``, and the file is
restored. Every run gets a fresh, empty NUMBA_CACHE_DIR: Numba checks only a kernel's own
file against its cache, so a cache compiled before the edit of a helper in another module
could hide a mutant. PYTHONPATH points at the copy, and the tool checks once that
``import nbnet`` there imports the copy.

Status per mutant: "caught" (pytest exit 1: a test failed), "escaped" (exit 0), "error"
(exit 2-4: the mutant or its selection is broken, e.g. an import or collection error; exit
5: no test ran; a failure that is Numba's compile error, since a mutant must compile; or
a run past --timeout). The JSON lists per mutant its id, file, description, status, the
first failing test's node id, the failure's message line, and the seconds it took. The
exit status is 1 when any mutant escaped or errored, 2 when the baseline failed.

Mutants whose ``env`` sets NUMBA_ENABLE_CUDASIM=1 mutate a CUDA twin and run the CUDA
kernel tests directly under Numba's CUDA simulator (narrow selections: the simulator is
slow). Run this whenever you change maths; add a mutant for a new kernel.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("nbnet", "tests", "models", "pyproject.toml", "README.md")
PYTEST_FLAGS = ("-x", "-q", "-p", "no:cacheprovider", "-rfE")
SIM = {"NUMBA_ENABLE_CUDASIM": "1"}
# The Keras parity tests (#22), which catch the table of planted bugs.
PARITY = ("tests/test_keras_parity.py", "tests/test_losses_optimizers.py")


@dataclass(frozen=True)
class Mutant:
    id: str
    description: str
    file: str                 # relative to nbnet/
    edits: tuple              # ((old, new), ...): each old must occur exactly once
    tests: tuple              # pytest arguments: node ids, files, or "-k", "expr"
    env: dict = field(default_factory=dict, hash=False)


def M(id, description, file, old, new, tests, env=None, more=()):
    return Mutant(id, description, file, ((old, new),) + tuple(more), tuple(tests), dict(env or {}))


# ------------------------------------------------------------------------------- mutants
MUTANTS = [
    # -- the table (#22); their tests are in PARITY ------------------------------
    M("adam_pytorch_epsilon", "Adam with PyTorch's epsilon placement: eps added to sqrt(v_hat), not sqrt(v)",
      "optimizers.py",
      "self.epsilon, self._decay(lr), halt=halt)",
      "self.epsilon * np.sqrt(1.0 - self.beta_2 ** t), self._decay(lr), halt=halt)", PARITY),
    M("adam_no_epsilon", "Adam without epsilon", "kernels/optim.py",
      "alpha * m[i] / (np.sqrt(v[i]) + eps)", "alpha * m[i] / np.sqrt(v[i])", PARITY),
    M("softmax_ce_no_max_shift", "softmax cross-entropy from logits without the max shift (overflows)",
      "kernels/losses.py",
      "norm += np.exp(np.float64(logits[i, k]) - peak)\n        log_norm = np.log(norm) + peak",
      "norm += np.exp(np.float64(logits[i, k]))\n        log_norm = np.log(norm)", PARITY),
    M("mse_summed_over_features", "MSE summed over the features instead of averaged", "kernels/losses.py",
      "rows, width = preds.shape\n    scale = 1.0 / (rows * width)\n",
      "rows, width = preds.shape\n    scale = 1.0 / rows\n", PARITY,
      more=[("total += w * term / width", "total += w * term")]),
    M("training_ignores_regularizers", "training adds each regularizer's gradient into a copy (the penalty is "
      "still reported, the weights never feel it)", "layers/base.py",
      "reg.apply(self.params[key], self.grads[key], self.ops, total_out)",
      "reg.apply(self.params[key], self.grads[key].copy(), self.ops, total_out)",
      PARITY + ("tests/test_training_step.py::test_regularized_step_matches_numpy",)),
    M("initializer_fans_ignore_receptive_field", "fan-in/fan-out of a conv kernel ignore the receptive field",
      "initializers.py",
      "return shape[-2] * receptive, shape[-1] * receptive", "return shape[-2], shape[-1]", PARITY),
    M("exponential_decay_always_staircase", "ExponentialDecay always floors the exponent (staircase)",
      "schedules.py",
      "(math.floor(power) if self.staircase else power)", "math.floor(power)", PARITY),
    M("batchnorm_weight_order", "BatchNormalization get_weights order: moving_variance before moving_mean",
      "layers/normalization.py",
      'weight_order = ("gamma", "beta", "moving_mean", "moving_variance")',
      'weight_order = ("gamma", "beta", "moving_variance", "moving_mean")', PARITY),
    # RMSprop and the probability cross-entropies, as rewritten for #22 (commit 676ee92).
    M("rmsprop_pytorch_epsilon", "RMSprop with PyTorch's epsilon placement, lr*g/(sqrt(ms) + eps)",
      "kernels/optim.py",
      "        denominator = mean_square[i] + eps\n        if centered:\n            average_grad[i]",
      "        denominator = mean_square[i]\n        if centered:\n            average_grad[i]", PARITY,
      more=[("        update = lr * g / np.sqrt(denominator)\n        if momentum > 0.0:\n            velocity[i]",
             "        update = lr * g / (np.sqrt(denominator) + eps)\n"
             "        if momentum > 0.0:\n            velocity[i]")]),
    M("rmsprop_centered_not_subtracted", "centered RMSprop keeps the running mean gradient but never subtracts "
      "its square", "kernels/optim.py",
      "            average_grad[i] = r * average_grad[i] + (one - r) * g\n"
      "            denominator -= average_grad[i] * average_grad[i]\n",
      "            average_grad[i] = r * average_grad[i] + (one - r) * g\n", PARITY),
    M("rmsprop_momentum_as_average", "RMSprop momentum as a moving average, mu*v + (1 - mu)*step",
      "kernels/optim.py",
      "velocity[i] = mu * velocity[i] + update\n", "velocity[i] = mu * velocity[i] + (one - mu) * update\n", PARITY),
    M("crossentropy_rows_not_normalised", "categorical cross-entropy on probabilities without y_pred / sum(y_pred)",
      "kernels/losses.py",
      "            q = np.float64(probs[i, k]) / row_sum\n", "            q = np.float64(probs[i, k])\n", PARITY),
    M("crossentropy_clipped_gradient_kept", "categorical cross-entropy: a clipped probability still gets -t/q",
      "kernels/losses.py",
      "            d_q = -target / q if epsilon <= q <= high else 0.0\n", "            d_q = -target / q\n", PARITY),
]

LAYERS = "tests/test_layers.py"
TRAINING_STEP = "tests/test_training_step.py"
CUDA_TESTS = "tests/test_cuda_kernels.py"

MUTANTS += [
    # -- dense --------------------------------------------------------------------------
    M("dense_kernel_grad_before_activation_derivative", "Dense backward: the kernel gradient taken from dy "
      "before the activation derivative is applied", "kernels/dense.py",
      "    activation_backward(y, dy, code, alpha, dy, dbias)\n    if dx is None:\n"
      "        add_transposed_product(x, dy, dkernel, scratch)\n    else:\n"
      "        weight_and_input_gradients(x, dy, kernel, dkernel, scratch, dx)\n",
      "    add_transposed_product(x, dy, dkernel, scratch)\n    activation_backward(y, dy, code, alpha, dy, dbias)\n"
      "    if dx is not None:\n        dx[...] = dy @ kernel.T\n",
      [LAYERS + "::test_dense_gradients"]),
    M("dense_keep_logits_bias_twice", "Dense with kept logits (fused softmax loss) adds the bias twice",
      "layers/core.py",
      "_bias_activation(ops, z2d, ops.nothing(z2d.dtype), self._code, self._slope, y2d)",
      "_bias_activation(ops, z2d, bias, self._code, self._slope, y2d)",
      [LAYERS + "::test_dense_keep_logits"]),
    # -- activations ------------------------------------------------------------------------
    M("few_row_dense_drops_bias", "a Dense forward of a few rows on one thread leaves the bias out",
      "kernels/few_rows.py", "                row[j] = row[j] + bias[j]", "                row[j] = row[j]",
      ["tests/test_few_rows.py::test_a_dense_forward_of_few_rows_has_the_product_then_activation_bits_on_any_threads"]),
    M("few_rows_drop_second_half",
      "a product of a few rows by large weights leaves the second half of the inner axis out",
      "kernels/few_rows.py", "row[j] = row[j] + second[r, j]", "row[j] = row[j]",
      ["tests/test_few_rows.py::test_the_product_is_numpys_with_the_same_bits_on_any_threads"]),
    M("few_rows_split_by_threads", "the inner axis is cut where the threads would make it, not by the weights' shape",
      "kernels/few_rows.py", "    split = _inner_split(b)\n    second = _second_half(a, b, split)\n    halves",
      "    split = _inner_split(b) if threads < 3 else b.shape[0] // 3\n"
      "    second = _second_half(a, b, split)\n    halves",
      ["tests/test_few_rows.py::test_the_product_is_numpys_with_the_same_bits_on_any_threads"]),
    M("pad_image_skips_first_channel", "the zero-bordered image copy leaves each pixel's first channel at zero",
      "kernels/conv.py", "            for c in range(np.uint64(0), run):\n                image[base + c]",
      "            for c in range(np.uint64(1), run):\n                image[base + c]",
      ["tests/test_winograd_tiles.py", "tests/test_winograd.py"]),
    M("crop_image_leaves_stale_columns", "the input gradient's columns past the padded image keep old values",
      "kernels/conv.py", "        for col in range(columns, np.uint64(width)):\n            for c in range(np.uint64(0), run):\n"
      "                dx[n, row, col, c] = zero",
      "        for col in range(columns, np.uint64(width)):\n            for c in range(np.uint64(0), run):\n"
      "                pass",
      ["tests/test_winograd_tiles.py", "tests/test_winograd.py", "tests/test_winograd5x5.py"]),
    M("implicit_pool_drops_bias", "a conv with its max pool on the implicit GEMM pools without the bias",
      "kernels/implicit_gemm.py",
      "maxpool_any_image(image_z.reshape(out_h, out_w, kernel2d.shape[1]), bias, code,",
      "maxpool_any_image(image_z.reshape(out_h, out_w, kernel2d.shape[1]), no_bias, code,",
      ["tests/test_implicit_gemm.py::test_a_conv_with_its_max_pool_has_the_direct_kernels_outputs"]),
    M("implicit_pool_planes_swapped", "a 2x2 pool's corner planes take top-right and bottom-left for each other",
      "kernels/implicit_gemm.py", "((r % 2) * 2 + s % 2) * plane", "((s % 2) * 2 + r % 2) * plane",
      ["tests/test_implicit_gemm.py::test_a_conv_with_its_max_pool_has_the_direct_kernels_outputs"]),
    M("sigmoid_negative_branch", "sigmoid of a negative input computed as 1/(1+e^x) instead of e^x/(1+e^x)",
      "kernels/activations.py",
      "return e / (1.0 + e)", "return 1.0 / (1.0 + e)", [LAYERS + "::test_dense_forward_matches_reference"]),
    M("tanh_derivative", "tanh derivative 1 - y instead of 1 - y^2", "kernels/activations.py",
      "    if code == TANH:\n        return one, one, zero, -one\n",
      "    if code == TANH:\n        return one, one, -one, zero\n", [LAYERS + "::test_dense_gradients"]),
    M("softmax_backward_unweighted_dot", "softmax backward: sum(dy) instead of sum(dy * y)",
      "kernels/activations.py",
      "dot += dy[i, k] * y[i, k]", "dot += dy[i, k]", [LAYERS + "::test_dense_gradients"]),
    M("activation_backward_chunk_bounds", "activation backward: chunk bounds rows//chunks*(chunk+1), the last "
      "rows of an uneven split get no gradient", "kernels/activations.py",
      "slope_terms(code, alpha, y.dtype.type)\n    for chunk in range(begin, end):\n"
      "        for i in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):",
      "slope_terms(code, alpha, y.dtype.type)\n    for chunk in range(begin, end):\n"
      "        for i in range(chunk * rows // chunks, (chunk + 1) * (rows // chunks)):",
      [LAYERS + "::test_dense_backward_over_uneven_reduction_chunks"]),
    # -- conv: im2col, same padding, direct ----------------------------------------------------
    M("conv_same_padding_odd_pixel_first", "'same' padding puts the odd pixel before instead of after",
      "kernels/conv.py",
      "return out, total // 2, total - total // 2", "return out, total - total // 2, total // 2",
      [LAYERS + "::test_conv_forward_matches_reference"]),
    M("im2col_tap_order_transposed", "im2col writes the window taps column-major (q*kh + p)", "kernels/conv.py",
      "                        base = (p * kw + q) * channels\n                        if 0 <= y < height",
      "                        base = (q * kh + p) * channels\n                        if 0 <= y < height",
      [LAYERS + "::test_conv_forward_matches_reference"]),
    M("col2im_overwrites", "col2im assigns instead of accumulating overlapping windows", "kernels/conv.py",
      "dx[n, y, xx, c] += dcols[row, base + c]", "dx[n, y, xx, c] = dcols[row, base + c]",
      [LAYERS + "::test_conv_gradients"]),
    M("direct_conv_strides_swapped", "direct conv forward: row and column strides swapped", "kernels/conv.py",
      "_load_window(image, np.uintp((i * sh * padded_w + j * sw) * channels), group_offsets, window)",
      "_load_window(image, np.uintp((i * sw * padded_w + j * sh) * channels), group_offsets, window)",
      [LAYERS + "::test_conv_forward_matches_reference"]),
    M("direct_conv_dx_overwrites", "direct conv backward: dx of a tap assigned, not accumulated over windows",
      "kernels/conv.py",
      "dimage[corner + offsets[t]] += total", "dimage[corner + offsets[t]] = total",
      [LAYERS + "::test_conv_gradients"]),
    M("direct_conv_dkernel_pair_row", "direct conv kernel gradient: the paired pixel's gradient read from the "
      "same row", "kernels/conv.py",
      "grads_b = dz[row + 1, start:stop] if pair", "grads_b = dz[row, start:stop] if pair",
      [LAYERS + "::test_conv_gradients"]),
    # -- Winograd -------------------------------------------------------------------------
    M("winograd_input_transform_sign", "Winograd B^T row 2 with the wrong sign", "kernels/winograd.py",
      "_SIGNS = np.array([-1.0, 1.0, -1.0, -1.0])", "_SIGNS = np.array([-1.0, 1.0, 1.0, -1.0])",
      ["tests/test_winograd.py::test_winograd_matches_im2col"]),
    M("implicit_backward_chunk_bounds", "the implicit GEMM's backward ends each chunk of images at (chunk + 1) "
      "* (batch // chunks): the last images of an uneven split add nothing to the kernel gradient",
      "kernels/implicit_gemm.py",
      "        for n in range(chunk * batch // chunks, (chunk + 1) * batch // chunks):\n"
      "            _pad_image(x[n], pad_top, pad_left, padded)\n            if need_dx:",
      "        for n in range(chunk * batch // chunks, (chunk + 1) * (batch // chunks)):\n"
      "            _pad_image(x[n], pad_top, pad_left, padded)\n            if need_dx:",
      ["tests/test_implicit_gemm.py"]),
    M("implicit_pooled_backward_overwrites", "a first layer's pooled kernel gradient: each image's sums overwrite "
      "its chunk's instead of adding to them", "kernels/implicit_gemm.py",
      "image_dz.reshape(-1, filters), sums, 1, spare", "image_dz.reshape(-1, filters), sums, 0, spare",
      ["tests/test_implicit_gemm.py::test_a_conv_with_its_max_pool_has_the_direct_kernels_outputs"]),
    M("implicit_activation_part_short", "the implicit GEMM's tanh / sigmoid / leaky relu skip the last pixel of "
      "each part of an image", "kernels/implicit_gemm.py",
      "[start * filters:end * filters])", "[start * filters:(end - 1) * filters])",
      ["tests/test_implicit_gemm.py::test_an_activation_over_each_part_of_an_image_gives_the_same_bits_at_any_split"]),
    M("pool_scatter_keeps_stale_gradients", "the few-channel pool gradient does not zero the image first: "
      "pixels that are no window's maximum keep what the buffer held", "kernels/pool.py",
      "    flat = dz.reshape(-1)\n    for k in range(flat.size):\n        flat[k] = zero\n",
      "    flat = dz.reshape(-1)\n",
      ["tests/test_winograd.py::test_the_pools_activation_gradient_matches_numpy"]),
    M("pool_scatter_ignores_the_rectifier", "the few-channel pool gradient passes every window's gradient, also "
      "where relu cut its maximum to zero", "kernels/pool.py",
      "                grad = pooled_grads[c] if linear | (pooled[c] > zero) else zero\n",
      "                grad = pooled_grads[c]\n",
      ["tests/test_winograd.py::test_the_pools_activation_gradient_matches_numpy"]),
    M("fast_exp_clamp_swallows_nan", "the float32 exp's clamp turns NaN into the bound (comparisons that are "
      "false for NaN pick it): tanh and sigmoid of NaN come out finite", "kernels/fast_math.py",
      "    y = _EXP32_MAX if value > _EXP32_MAX else value\n    y = -_EXP32_MAX if y < -_EXP32_MAX else y\n",
      "    y = value if value < _EXP32_MAX else _EXP32_MAX\n    y = y if y > -_EXP32_MAX else -_EXP32_MAX\n",
      [LAYERS + "::test_float32_tanh_and_sigmoid_pass_nan_on_as_keras_does"]),
    M("fast_exp_drops_low_part_of_ln2", "the float32 exp's range reduction drops the low part of ln 2 (exp off by "
      "about 1.4e-6 relative times n)", "kernels/fast_math.py",
      "    r = (y - n * _LN2_HIGH32) - n * _LN2_LOW32\n", "    r = y - n * _LN2_HIGH32\n",
      [LAYERS + "::test_float32_tanh_and_sigmoid_are_within_a_few_ulps"]),
    M("fast_tanh_small_values_by_exp", "the float32 tanh takes (1 - e) / (1 + e) for small values too, where "
      "1 - exp(-2|x|) loses their digits", "kernels/fast_math.py",
      "    return small if a < _TANH_SMALL else large\n", "    return large\n",
      [LAYERS + "::test_float32_tanh_and_sigmoid_are_within_a_few_ulps"]),
    M("expm1_series_low_half_of_ln2", "the float32 ELU's range reduction drops the low part of ln 2 (results off "
      "by up to 2e-10 relative times n: some float32 roundings change)", "kernels/fast_math.py",
      "    r = (x - n * _LN2_HIGH) - n * _LN2_LOW\n", "    r = x - n * _LN2_HIGH\n",
      [LAYERS + "::test_float32_exponential_activations_round_as_libm_does"]),
    M("softplus_series_without_cube", "the float32 softplus's atanh series leaves out its s^3 term",
      "kernels/fast_math.py", "_ATANH_TERMS = tuple(1.0 / k for k in range(23, 1, -2))",
      "_ATANH_TERMS = tuple(1.0 / k for k in range(23, 3, -2)) + (0.0,)",
      [LAYERS + "::test_float32_exponential_activations_round_as_libm_does"]),
    M("selu_gradient_below_without_scale", "SELU's hoisted gradient below zero adds alpha, not scale * alpha",
      "kernels/activations.py", "else dtype(SELU_SCALE * SELU_ALPHA)", "else dtype(SELU_ALPHA)",
      [LAYERS + "::test_float32_exponential_activations_round_as_libm_does"]),
    M("depthwise_spread_sum_skips_a_copy", "a depth multiplier's input gradient sums only the first two of its "
      "repeated channels' gradients", "kernels/depthwise.py", "            for m in range(1, mult):",
      "            for m in range(1, min(mult, 2)):",
      ["tests/test_grouped_conv.py::test_gradients"]),
    M("depthwise_never_folds", "DepthwiseConv2D refuses the BatchNormalization after it (the norm then runs its own "
      "pass in every predict)", "layers/convolutional.py",
      "MobileNet block: DepthwiseConv2D, BatchNormalization, ReLU).\"\"\"\n        return self._code == LINEAR",
      "MobileNet block: DepthwiseConv2D, BatchNormalization, ReLU).\"\"\"\n        return False",
      ["tests/test_fusion.py::test_a_normalisation_folds_into_a_depthwise_conv_as_into_a_conv"]),
    M("depthwise_stores_without_activation", "the depthwise kernel leaves out the activation it was given to run",
      "kernels/depthwise.py",
      "            if code != LINEAR:\n                activate_fusable(code, alpha, row)\n",
      "            pass\n",
      ["tests/test_grouped_conv.py::test_gradients"]),
    M("depthwise_row_span_short", "a depthwise tap leaves out the last output column it reaches",
      "kernels/depthwise.py", "min(out_w, (width - 1 - offset) // sw + 1)", "min(out_w, (width - 1 - offset) // sw)",
      ["tests/test_grouped_conv.py::test_forward_matches_reference"]),
    M("turned_input_gradient_pad_off_by_one", "the turned block's input gradient pads the output gradient one "
      "column short on the left", "kernels/planar_blocks.py", "kh - 1 - pad_top, kw - 1 - pad_left,",
      "kh - 1 - pad_top, kw - pad_left,", ["tests/test_planar_blocks.py::test_the_turned_block_matches_im2col"]),
    M("turned_store_swaps_quarters", "the turned block stores a vector's second and third quarters of positions "
      "swapped", "kernels/implicit_gemm.py", "position = v * 16 + half * 8 + part * 4 + pair * 2",
      "position = v * 16 + part * 8 + half * 4 + pair * 2", ["tests/test_planar_blocks.py::test_the_turned_block_matches_im2col"]),
    M("turned_relayout_skips_a_column", "the turned block's sums reach z without each row's first pixel",
      "kernels/planar_blocks.py", "j_low, j_high = max(0, low - i * wide), min(out_w, high - i * wide)",
      "j_low, j_high = max(1, low - i * wide), min(out_w, high - i * wide)", ["tests/test_planar_blocks.py::test_the_turned_block_matches_im2col"]),
    M("turned_activation_stops_a_pixel_short", "the turned block's activation leaves out each part's last pixel",
      "kernels/planar_blocks.py", "max(0, min(out_w, high - (i_high - 1) * wide))",
      "max(0, min(out_w - 1, high - (i_high - 1) * wide))", ["tests/test_planar_blocks.py::test_the_turned_block_matches_im2col"]),
    M("planes_runs_drop_the_tail", "the planar copy by runs of 16 pixels leaves a row's last part uncopied",
      "kernels/planar_blocks.py", "for run in range(-(-(stop - first) // 16)):", "for run in range((stop - first) // 16):",
      ["tests/test_planar_blocks.py::test_the_planes_copied_by_runs_of_16_pixels_are_the_loops"]),
    M("planes_transpose_lanes_unordered", "the 16 x 8 transpose stores its lanes in the order its shuffles left them",
      "kernels/planar_blocks.py", "order = [(p & 1) * 8 + (p >> 1) for p in range(16)]", "order = list(range(16))", ["tests/test_planar_blocks.py::test_the_planes_copied_by_runs_of_16_pixels_are_the_loops"]),
    M("turned_kernel_gradient_keeps_last_image", "the turned block's kernel gradient keeps each chunk's last image's "
      "products instead of their sum", "kernels/planar_blocks.py", "sums[base + lane, o] += scratch[lane, o]",
      "sums[base + lane, o] = scratch[lane, o]",
      ["tests/test_planar_blocks.py::test_the_turned_blocks_kernel_gradient_has_the_implicit_gemms_bits"]),
    M("implicit_part_copies_a_row_short", "a part of a split image copies one row fewer than its windows read",
      "kernels/implicit_gemm.py", "(end - 1) // out_w * sh + kh)", "(end - 1) // out_w * sh + kh - 1)",
      ["tests/test_implicit_gemm.py::test_an_images_pixels_split_across_threads_give_the_same_bits"]),
    M("implicit_border_right_not_zeroed", "the implicit GEMM's image buffer keeps garbage right of the image",
      "kernels/implicit_gemm.py", "            buffer[y, inside_right:] = zero\n", "            pass\n",
      ["tests/test_implicit_gemm.py::test_an_images_pixels_split_across_threads_give_the_same_bits"]),
    M("implicit_replay_splits_for_recording_threads", "a recorded one-image conv splits its image for the threads "
      "it was recorded on (one), not for all of Numba's: no split when replayed on two", "kernels/implicit_gemm.py",
      "                                   numba.config.NUMBA_NUM_THREADS)",
      "                                   numba_thread_count())",
      ["tests/test_inference_program.py::test_a_one_image_conv_replays_the_implicit_gemms_kernel_split_for_every_thread"]),
    M("avgpool_2x2_window_slip", "the 2x2 average pool's own loops sum a window's top-left value twice, its "
      "top-right never", "kernels/pool.py",
      "(((top[k] + top[k + channels]) + bottom[k])", "(((top[k] + top[k]) + bottom[k])",
      [LAYERS + "::test_pool_forward_matches_reference"]),
    M("global_avgpool_backward_undivided", "GlobalAveragePooling2D's backward spreads the gradient undivided by the "
      "pixels", "kernels/pool.py",
      "                    dx[n, r, s, c] = dy[n, c] * inverse", "                    dx[n, r, s, c] = dy[n, c]",
      ["tests/test_layers_reshaping.py::test_global_average_pooling"]),
    M("moving_scale_without_epsilon", "BatchNormalization's inference scale made without epsilon (gamma / "
      "sqrt(moving_variance))", "kernels/normalization.py",
      "scale[c] = np.float64(gamma[c]) / np.sqrt(np.float64(moving_variance[c]) + epsilon)",
      "scale[c] = np.float64(gamma[c]) / np.sqrt(np.float64(moving_variance[c]))",
      [LAYERS + "::test_batchnorm_inference_uses_moving_statistics"]),
    M("winograd_output_transform_sign", "Winograd A^T m A: the bottom-right output with a sign slip",
      "kernels/winograd.py",
      "a1 + b1 + c1, b1 - c1 - d1\n", "a1 + b1 + c1, b1 - c1 + d1\n",
      ["tests/test_winograd.py::test_winograd_matches_im2col"]),
    M("winograd_kernel_transform_G", "Winograd G's third row [1/2, 1/2, -1/2]", "kernels/winograd.py",
      "[0.5, -0.5, 0.5], [0, 0, 1]]", "[0.5, 0.5, -0.5], [0, 0, 1]]",
      ["tests/test_winograd.py::test_winograd_matches_im2col"]),
    M("winograd_adjoint_sign", "Winograd backward: adjoint of B^T with d2 = v1 + v2 + v0", "kernels/winograd.py",
      "[-1.0, 1.0, 1.0], [-1.0, 0.0, 0.0]]", "[1.0, 1.0, 1.0], [-1.0, 0.0, 0.0]]",
      ["tests/test_winograd.py::test_winograd_backward_matches_im2col"]),
    # -- pooling --------------------------------------------------------------------------
    M("maxpool_backward_overwrites", "max pool backward assigns instead of accumulating a pixel that is the "
      "max of several windows", "kernels/pool.py",
      "pixels[argmax[n, i, j, c], c] += dy[n, i, j, c]", "pixels[argmax[n, i, j, c], c] = dy[n, i, j, c]",
      [LAYERS + "::test_pool_gradients"]),
    M("maxpool_padding_sign", "max pool 'same': the window's rows start at i*sh + pad_top", "kernels/pool.py",
      "                    r = i * sh - pad_top + p\n", "                    r = i * sh + pad_top + p\n",
      [LAYERS + "::test_pool_forward_matches_reference"]),
    M("avgpool_counts_padding", "average pool 'same' divides by the full window (count_include_pad)",
      "kernels/pool.py",
      "inverse = x.dtype.type(1.0) / ((r1 - r0) * (s1 - s0))", "inverse = x.dtype.type(1.0) / (ph * pw)",
      [LAYERS + "::test_pool_forward_matches_reference"]),
    M("avgpool_backward_strides_swapped", "average pool backward uses the row stride for columns",
      "kernels/pool.py",
      "s0, s1 = max(j * sw - pad_left, 0), min(j * sw - pad_left + pw, width)\n"
      "                inverse = dx.dtype.type(1.0)",
      "s0, s1 = max(j * sh - pad_left, 0), min(j * sh - pad_left + pw, width)\n"
      "                inverse = dx.dtype.type(1.0)",
      [LAYERS + "::test_pool_gradients"]),
    M("fused_pool_bottom_right_position", "fused 2x2 pool records the bottom-right maximum at bottom-left",
      "kernels/pool.py",
      "value, position = bottom_right, corner + width + 1", "value, position = bottom_right, corner + width",
      ["tests/test_fusion.py::test_fused_step_equals_unfused"]),
    M("fused_pool_backward_ignores_relu", "fused pool backward passes the gradient through a ReLU that was off",
      "kernels/pool.py",
      "                        passes = (where[c] == pixel) & (linear | (pooled[c] > zero))\n"
      "                        grad = pooled_grads[c] if passes else zero",
      "                        passes = where[c] == pixel\n"
      "                        grad = pooled_grads[c] if passes else zero",
      ["tests/test_fusion.py::test_fused_step_equals_unfused"]),
    # -- BatchNormalization ---------------------------------------------------------------------
    M("batchnorm_backward_no_mean_dy", "BatchNormalization backward without the - mean(dy) term",
      "kernels/normalization.py",
      "(-g_scale * mean_dy).astype(dtype)", "(0.0 * g_scale * mean_dy).astype(dtype)",
      [LAYERS + "::test_batchnorm_training_forward_and_gradients"]),
    M("batchnorm_unbiased_batch_variance", "BatchNormalization training normalises with the unbiased (n - 1) "
      "batch variance", "kernels/normalization.py",
      "variance = max(total_squares / rows - mean[k] * mean[k], 0.0)",
      "variance = max((total_squares - rows * mean[k] * mean[k]) / (rows - 1), 0.0)",
      [LAYERS + "::test_batchnorm_training_forward_and_gradients"]),
    M("batchnorm_momentum_pytorch_convention", "moving averages with PyTorch's momentum convention "
      "(momentum weighs the batch)", "kernels/normalization.py",
      "keep = moving_mean.dtype.type(momentum)\n    take = moving_mean.dtype.type(1.0 - momentum)",
      "keep = moving_mean.dtype.type(1.0 - momentum)\n    take = moving_mean.dtype.type(momentum)",
      [LAYERS + "::test_batchnorm_moving_statistics_update"]),
    M("batchnorm_infer_epsilon_outside_sqrt", "BatchNormalization inference: epsilon outside the sqrt",
      "kernels/normalization.py",
      "return gamma / np.sqrt(moving_variance.astype(np.float64) + epsilon)",
      "return gamma / (np.sqrt(moving_variance.astype(np.float64)) + epsilon)",
      [LAYERS + "::test_batchnorm_inference_uses_moving_statistics"]),
    # -- dropout ------------------------------------------------------------------------------
    M("dropout_mask_inverted", "dropout keeps the units whose bits fall below the threshold (keeps rate, "
      "not 1 - rate)", "kernels/dropout.py",
      "factor = scale if keep_bits(key, np.uint64(i)) >= limit else zero",
      "factor = scale if keep_bits(key, np.uint64(i)) < limit else zero",
      [LAYERS + "::test_dropout_training_mask_statistics_and_scaling"]),
    M("dropout_scale_multiplies", "dropout scales kept units by 1 - rate instead of 1/(1 - rate)", "layers/core.py",
      "self._scale = x.dtype.type(1.0 / (1.0 - self.rate))", "self._scale = x.dtype.type(1.0 - self.rate)",
      [LAYERS + "::test_dropout_training_mask_statistics_and_scaling"]),
    # -- regularization -----------------------------------------------------------------------
    M("l2_gradient_missing_factor_2", "L2 gradient l2*w instead of 2*l2*w", "kernels/regularization.py",
      "square_scale = weights.dtype.type(2.0 * l2)", "square_scale = weights.dtype.type(l2)",
      [LAYERS + "::test_dense_kernel_regularization"]),
    M("l1_penalty_without_abs", "L1 penalty l1*w instead of l1*|w|", "kernels/regularization.py",
      "total += l1 * abs(w) + l2 * w * w", "total += l1 * w + l2 * w * w",
      [LAYERS + "::test_dense_kernel_regularization"]),
    # -- optimizers (SGD, AdamW) ------------------------------------------------------------------
    M("sgd_nesterov_branches_swapped", "SGD: the Nesterov and plain momentum updates swapped", "kernels/optim.py",
      "params[i] += mu * v - lr * grads[i] if nesterov else v",
      "params[i] += v if nesterov else mu * v - lr * grads[i]",
      [TRAINING_STEP + "::test_sgd_momentum_and_nesterov_follow_keras"]),
    M("sgd_velocity_not_stored", "SGD momentum never stores its velocity", "kernels/optim.py",
      "            velocity[i] = v\n", "",
      [TRAINING_STEP + "::test_sgd_momentum_and_nesterov_follow_keras"]),
    M("adamw_decay_without_lr", "AdamW decays by weight_decay, not lr * weight_decay", "optimizers.py",
      "return lr * (self.weight_decay or 0.0)", "return self.weight_decay or 0.0",
      [TRAINING_STEP + "::test_adamw_decays_by_lr_times_weight_decay"]),
    # -- the training step -------------------------------------------------------------------
    M("gradients_not_zeroed", "the flat gradient is not zeroed between steps (gradients accumulate)",
      "training.py",
      "        ops.fill_zero(self.flat_grads)\n", "",
      [TRAINING_STEP + "::test_two_steps_of_sgd_match_numpy"]),
    M("shuffle_reuses_order", "every epoch restores the generator after drawing its order: the same "
      "order every epoch", "training.py",
      "        if current != epoch_rng_state:\n            self.rng.bit_generator.state = current",
      "        self.rng.bit_generator.state = current",
      [TRAINING_STEP + "::test_each_epoch_draws_a_new_order"]),
    M("validation_split_takes_first", "validation_split holds out the first samples instead of the last",
      "training.py",
      "split = int(len(x[0]) * (1.0 - validation_split))  # Keras: the last samples, before shuffling\n"
      "            x, x_val = [a[:split] for a in x], [a[split:] for a in x]\n"
      "            targets, t_val = [t[:split] for t in targets], [t[split:] for t in targets]",
      "split = int(len(x[0]) * validation_split)\n"
      "            x_val, x = [a[:split] for a in x], [a[split:] for a in x]\n"
      "            t_val, targets = [t[:split] for t in targets], [t[split:] for t in targets]",
      [TRAINING_STEP + "::test_validation_split_holds_out_the_last_samples"]),
    M("gather_rows_ignores_start", "batch gathering reads order[i], ignoring the batch's start (every batch "
      "is the first)", "kernels/training.py",
      "row = source[order[start + i]]", "row = source[order[i]]",
      [TRAINING_STEP + "::test_fit_epoch_equals_minibatch_sgd_in_numpy"]),
    M("check_finite_ignores_loss", "the divergence check looks at the gradients only, not the loss",
      "kernels/training.py",
      "if not (np.isfinite(total[0]) and all_finite(values)):", "if not all_finite(values):",
      [CUDA_TESTS + "::test_check_finite"], SIM),
    M("parallel_zero_fill_leaves_tail", "the gradients' parallel zero fill stops each thread's piece one value "
      "short: the last value of each piece keeps the last step's gradient", "kernels/training.py",
      "    for i in range(np.uint64(begin), np.uint64(end)):\n        values[i] = zero",
      "    for i in range(np.uint64(begin), np.uint64(end) - np.uint64(1)):\n        values[i] = zero",
      ["tests/test_training.py::test_the_gradient_checks_and_zero_fill_of_many_values_run_on_every_thread"]),
    M("parallel_finite_probe_skips_a_part", "the parallel finite check sums the probes of all parts but the last",
      "kernels/training.py", "return probes.sum() == 0.0", "return probes[:-1].sum() == 0.0",
      ["tests/test_training.py::test_the_gradient_checks_and_zero_fill_of_many_values_run_on_every_thread"]),
    M("parallel_pieces_overlap", "parallel_ranges' pieces each end one item late: neighbouring threads both run "
      "the item between them (sums counted twice)", "kernels/parallel.py",
      "stop = builder.sdiv(builder.mul(builder.add(piece, ir.Constant(i64, 1)), count), total)",
      "stop = builder.add(builder.sdiv(builder.mul(builder.add(piece, ir.Constant(i64, 1)), count), total), "
      "ir.Constant(i64, 1))",
      ["tests/test_parallel.py"]),
    M("cosine_decay_not_clamped", "CosineDecay past decay_steps climbs back up (step not clamped)", "schedules.py",
      "self._decay(min(step, self.decay_steps), self.initial_learning_rate)",
      "self._decay(step, self.initial_learning_rate)",
      PARITY),
    # -- metrics ------------------------------------------------------------------------------
    M("accuracy_argmax_skips_last_class", "accuracy count: the argmax never considers the last class",
      "kernels/training.py",
      "        best = 0\n        for k in range(1, width):",
      "        best = 0\n        for k in range(1, width - 1):",
      [TRAINING_STEP + "::test_accuracy_counts_argmax_hits"]),
    # -- ONNX exporter ----------------------------------------------------------------------------
    M("onnx_conv_pads_order", "ONNX pads written [top, bottom, left, right] instead of [top, left, bottom, right]",
      "onnx/exporter.py",
      "return [top, left, bottom, right]", "return [top, bottom, left, right]",
      ["tests/test_onnx.py::test_conv2d_geometry"]),
    M("onnx_gemm_transB", "ONNX Gemm with transB=1 on Keras's (in, out) kernel", "onnx/exporter.py",
      'graph.node("Gemm", inputs + ([bias] if bias else []), prefix)',
      'graph.node("Gemm", inputs + ([bias] if bias else []), prefix, transB=1)',
      ["tests/test_onnx.py::test_fused_activations"]),
    M("onnx_flatten_channels_first", "ONNX Flatten of the channels-first tensor (C, H, W order)", "onnx/exporter.py",
      "tensor = graph.transpose(tensor, prefix, channels_first=False)  # Keras order: H, W, C",
      "tensor = graph.transpose(tensor, prefix, channels_first=True)",
      ["tests/test_onnx.py::test_other_stacks"]),
    M("onnx_batchnorm_default_epsilon", "ONNX BatchNormalization without the layer's epsilon (ONNX's 1e-5)",
      "onnx/exporter.py",
      'graph.node("BatchNormalization", inputs, prefix, epsilon=float(layer.epsilon))',
      'graph.node("BatchNormalization", inputs, prefix)',
      ["tests/test_onnx.py::test_batch_normalization"]),
    # -- saving / loading ---------------------------------------------------------------------
    M("load_forgets_optimizer_iterations", "load_model does not restore the optimizer's step count (Adam's "
      "bias correction restarts)", "saving.py",
      'model.optimizer.iterations = int(meta.get("optimizer_iterations", 0))', "model.optimizer.iterations = 0",
      [TRAINING_STEP + "::test_saved_model_continues_training_exactly"]),
    M("load_forgets_rng_state", "load_model does not restore the generator (a resumed run shuffles differently)",
      "saving.py",
      '        if meta.get("rng_state"):\n            model.rng.bit_generator.state = meta["rng_state"]\n', "",
      [TRAINING_STEP + "::test_saved_model_continues_training_exactly"]),
    M("load_optimizer_slots_misnamed", "load_model keys optimizer slots by the full array name (Adam restarts "
      "from zero moments)",
      "saving.py",
      'model.optimizer.slots = {key.split(".", 1)[1]: np.array(value, np.float32)',
      'model.optimizer.slots = {key: np.array(value, np.float32)',
      [TRAINING_STEP + "::test_saved_model_continues_training_exactly"]),
]

MUTANTS += [
    # -- the Keras surface of #15: newer optimizers, clipping, sample weights, metrics, files --------
    M("adagrad_epsilon_outside_sqrt", "Adagrad with epsilon added after the square root", "kernels/optim.py",
      "params[i] -= lr * g / np.sqrt(accumulator[i] + eps)", "params[i] -= lr * g / (np.sqrt(accumulator[i]) + eps)",
      PARITY),
    M("nadam_constant_momentum", "Nadam without its momentum schedule (mu_t = beta_1)", "optimizers.py",
      "return self.beta_1 * (1.0 - 0.5 * 0.96 ** t)", "return self.beta_1", PARITY),
    M("adamax_no_bias_correction", "Adamax without the 1 - beta_1^t correction", "optimizers.py",
      "step_size = lr / (1.0 - self.beta_1 ** (self.iterations + 1))", "step_size = lr", PARITY),
    M("clipnorm_over_all_arrays", "clipnorm clips all weight arrays together (global_clipnorm's rule)",
      "optimizers.py", "if segments is None or self.clipnorm is None", "if True", PARITY),
    M("sample_weight_not_in_gradient", "sample weights scale the loss but not its gradient", "kernels/losses.py",
      "grad[i, k] = (np.exp(logits[i, k] - log_norm) - target) * scale * w",
      "grad[i, k] = (np.exp(logits[i, k] - log_norm) - target) * scale", PARITY),
    M("class_weight_by_position", "class_weight looked up by the sample's index, not its class", "training.py",
      "by_class = np.array([float(class_weight.get(int(c), 1.0)) for c in classes])",
      "by_class = np.array([float(class_weight.get(i, 1.0)) for i, _ in enumerate(classes)])", PARITY),
    M("early_stopping_one_epoch_late", "EarlyStopping stops at wait > patience (one epoch after Keras)",
      "callbacks.py", "if self.wait >= self.patience and epoch > 0:", "if self.wait > self.patience and epoch > 0:",
      PARITY),
    M("auc_left_heights", "AUC summed with the left heights instead of the trapezoid", "metrics.py",
      "heights = (y[:-1] + y[1:]) / 2", "heights = y[:-1]", PARITY),
    M("zero_padding_offsets_swapped", "ZeroPadding2D puts the image at (left, top)", "layers/reshaping.py",
      "self.ops.zero_pad_forward(x, self.padding[0][0], self.padding[1][0], y)",
      "self.ops.zero_pad_forward(x, self.padding[1][0], self.padding[0][0], y)", ("tests/test_layers_reshaping.py",)),
    M("global_pool_square_window", "global pooling's window is height x height", "layers/pooling.py",
      "(x.shape[1], x.shape[2], 1, 1, 0, 0)", "(x.shape[1], x.shape[1], 1, 1, 0, 0)",
      ("tests/test_layers_reshaping.py",)),
    M("keras_file_accepts_any_setting", "a .keras layer setting nbnet cannot honour is silently dropped",
      "keras_file.py", "elif key not in _ANY_VALUE and not _neutral(key, value):", "elif False:",
      ("tests/test_keras_file.py",)),
    M("keras_file_dense_kernel_transposed", "nbnet's .keras files store Dense kernels transposed",
      "weights_file.py", "variables.create_dataset(str(index), data=np.asarray(value, np.float32))",
      "variables.create_dataset(str(index), data=np.asarray(value, np.float32).T)",
      ("tests/test_keras_file.py", "tests/test_weights_file.py")),
    M("legacy_h5_weights_by_sorted_name", "Keras 2 weights files matched in sorted-name order, not the file's",
      "weights_file.py", "for name in group.attrs[\"layer_names\"]:", "for name in sorted(group.attrs[\"layer_names\"]):",
      ("tests/test_keras_file.py",)),
    M("keras_optimizer_state_adam_not_interleaved", "Adam's moments read from a .keras file as two lists, not "
      "interleaved per weight array", "keras_optimizer_state.py", 'return [["m", "v"]], 0', 'return [["m"], ["v"]], 0',
      ("tests/test_keras_file.py",)),
    M("validation_every_epoch", "validation_freq ignored: validation runs every epoch", "training.py",
      "if validation is not None and (epoch + 1) % validation_freq == 0:", "if validation is not None:",
      ("tests/test_training.py::test_validation_freq_and_batch_size",)),
    # -- graph models ----------------------------------------------------------------------------
    M("fan_in_gradient_overwritten", "a tensor feeding several layers keeps the last gradient, not their sum",
      "executor.py", "                ops.add_into(grads[slot].reshape(-1), grad.reshape(-1))\n",
      "                grads[slot] = grad\n", ("tests/test_functional.py",)),
    M("functional_layers_in_call_order", "a functional model lists its layers in call order, not Keras's depth "
      "order (get_weights differs from Keras's)", "graph.py",
      "ordered = sorted(layers, key=lambda key: (-layer_depth[key], first_met[key]))", "ordered = list(layers)",
      ("tests/test_functional_parity.py",)),
    M("loss_weights_ignored", "loss_weights weigh the logged loss but not the gradient", "training.py",
      "            if head.weight != 1.0:", "            if False:",
      ("tests/test_functional_parity.py::test_two_outputs_log_and_step_as_keras",)),
    M("stream_class_weight_ignored", "class_weight is ignored when fit reads a batch source", "feeding.py",
      "model._sample_weights(y, targets, weight, self.class_weight)", "model._sample_weights(y, targets, weight, None)",
      ("tests/test_feeding.py",)),
    M("weights_file_keyed_by_layer_name", "save_weights keys layers by name, not Keras's per-class numbering",
      "weights_file.py", 'keys.append((base if count == 0 else f"{base}_{count}", layer))',
      "keys.append((layer.name, layer))", ("tests/test_weights_file.py",)),
]

CUDA_OPTIMIZERS = (CUDA_TESTS + "::test_optimizers",)
MUTANTS += [
    # -- CUDA twins, against their CPU kernels under the simulator -------------------------------
    M("cuda_adam_epsilon_inside_sqrt", "CUDA Adam: epsilon inside the sqrt", "kernels/cuda/optim.py",
      "alpha * m[i] / (math.sqrt(v[i]) + eps)", "alpha * m[i] / math.sqrt(v[i] + eps)",
      [TRAINING_STEP + "::test_cuda_adam_epsilon_decides_tiny_gradients_under_simulator"]),
    M("cuda_sgd_nesterov_plain", "CUDA SGD: Nesterov applies the plain momentum update", "kernels/cuda/optim.py",
      "params[i] += mu * v - lr * grads[i] if nesterov else v", "params[i] += v",
      CUDA_OPTIMIZERS, SIM),
    M("cuda_sigmoid_derivative", "CUDA sigmoid derivative y*(1+y)", "kernels/cuda/activations.py",
      "grad = grad * out * (1 - out)", "grad = grad * out * (1 + out)",
      [CUDA_TESTS + "::test_activation_backward"], SIM),
    M("cuda_softmax_drops_bias", "CUDA softmax: the bias left out of the exponentials (kept in the row maximum only)",
      "kernels/cuda/activations.py",
      "            y[i, k] = value\n            peak = _max(peak, value)",
      "            y[i, k] = z[i, k]\n            peak = _max(peak, value)",
      [CUDA_TESTS + "::test_bias_activation_forward"], SIM),
    M("cuda_dropout_unscaled", "CUDA dropout keeps units unscaled", "kernels/cuda/dropout.py",
      "out[i] = values[i] * scale if _keep_bits(key, np.uint64(i)) >= threshold else zero",
      "out[i] = values[i] if _keep_bits(key, np.uint64(i)) >= threshold else zero",
      [CUDA_TESTS + "::test_moving_averages_dropout_mask_and_rescaling"], SIM),
    M("cuda_l1_sign_of_zero", "CUDA L1 gradient: sign(0) taken as +1", "kernels/cuda/regularization.py",
      "        elif w == 0:\n            sign = zero", "        elif w == 0:\n            sign = sign_scale",
      [CUDA_TESTS + "::test_penalty_and_gradient"], SIM),
    M("cuda_accuracy_argmax_off_by_one", "CUDA accuracy: the argmax skips the last class",
      "kernels/cuda/training.py",
      "        best = 0\n        for k in range(1, width):", "        best = 0\n        for k in range(1, width - 1):",
      [CUDA_TESTS + "::test_count_correct"], SIM),
    M("cuda_gather_rows_ignores_start", "CUDA gather_rows reads order[i], ignoring the batch's start",
      "kernels/cuda/training.py",
      "out[i, k] = source[order[start + i], k]", "out[i, k] = source[order[i], k]",
      [CUDA_TESTS + "::test_gather_rows_and_fill_zero"], SIM),
    M("cuda_avgpool_counts_padding", "CUDA average pool divides by the full window (count_include_pad)",
      "kernels/cuda/pool.py",
      "        inverse = one / ((r1 - r0) * (s1 - s0))\n        total = zero",
      "        inverse = one / (ph * pw)\n        total = zero",
      [CUDA_TESTS + "::test_avgpool"], SIM),
    M("cuda_im2col_tap_row_from_kh", "CUDA im2col: the tap row taken as col // (channels * kh)",
      "kernels/cuda/conv.py",
      "        p = col // (channels * kw)\n", "        p = col // (channels * kh)\n",
      [CUDA_TESTS + "::test_im2col_and_col2im"], SIM),
    M("cuda_col2im_skips_stride_check", "CUDA col2im gathers from rows the stride never reached (no t % sh check)",
      "kernels/cuda/conv.py",
      "            t = y + pad_top - p\n            if t < 0 or t % sh != 0:\n",
      "            t = y + pad_top - p\n            if t < 0:\n",
      [CUDA_TESTS + "::test_im2col_and_col2im"], SIM),
    M("cuda_rmsprop_pytorch_epsilon", "CUDA RMSprop: epsilon outside the sqrt", "kernels/cuda/optim.py",
      "        denominator = mean_square[i] + eps\n", "        denominator = mean_square[i]\n",
      [CUDA_TESTS + "::test_optimizers", "-k", "rmsprop"], SIM,
      more=[("        update = lr * g / math.sqrt(denominator)\n",
             "        update = lr * g / (math.sqrt(denominator) + eps)\n")]),
    M("cuda_crossentropy_rows_not_normalised", "CUDA categorical cross-entropy without the row normalisation",
      "kernels/cuda/losses.py",
      "            q = (probs[i, k] + 0.0) / row_sum\n", "            q = probs[i, k] + 0.0\n",
      [CUDA_TESTS + "::test_losses", "-k", "crossentropy_from_probabilities"], SIM),
    M("cuda_moving_averages_swapped", "CUDA moving averages with PyTorch's momentum convention",
      "kernels/cuda/normalization.py",
      "as_scalar(momentum, dtype), as_scalar(1.0 - momentum, dtype))",
      "as_scalar(1.0 - momentum, dtype), as_scalar(momentum, dtype))",
      [CUDA_TESTS + "::test_moving_averages_dropout_mask_and_rescaling"], SIM),
]


# ------------------------------------------------------------------------------- running
def _copy_tree(dest):
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc",
                                                                            ".hypothesis"))
        else:
            shutil.copy2(src, dest / name)


def _apply(scratch, mutant):
    """Apply the mutant's edits; return the original text (to restore). Raise if an old
    snippet does not occur exactly once."""
    path = scratch / "nbnet" / mutant.file
    original = path.read_text()
    text = original
    for old, new in mutant.edits:
        count = text.count(old)
        if count != 1:
            raise SystemExit(f"mutant {mutant.id}: its snippet occurs {count} times in nbnet/{mutant.file} "
                             f"(must be exactly once); update the mutant list:\n{old}")
        text = text.replace(old, new)
    path.write_text(text)
    return path, original


def _env(scratch, cache_dir, extra):
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    env.update(extra)
    env["PYTHONPATH"] = str(scratch) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["NUMBA_CACHE_DIR"] = str(cache_dir)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


_FAILED = re.compile(r"^(FAILED|ERROR) (.+?)(?: - (.*))?$", re.M)


TIMEOUT_S = 900
TIMED_OUT = -1
# A failure that says the mutated code does not compile: the mutant is broken, not caught.
_BROKEN = re.compile(r"numba\.core\.errors\.(TypingError|LoweringError|UnsupportedError)|\bSyntaxError\b")


def _run_pytest(scratch, tests, extra_env):
    """(exit code or TIMED_OUT, first failing node id, its message, seconds, output)."""
    with tempfile.TemporaryDirectory(prefix="numba-cache-", dir=scratch.parent) as cache:
        start = time.monotonic()
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", *PYTEST_FLAGS, *tests], cwd=scratch,
                                  env=_env(scratch, cache, extra_env), capture_output=True, text=True,
                                  timeout=TIMEOUT_S)
            code, stdout, out = proc.returncode, proc.stdout, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as error:
            code, stdout = TIMED_OUT, error.stdout or ""
            stdout = stdout.decode(errors="replace") if isinstance(stdout, bytes) else stdout
            out = stdout
        seconds = time.monotonic() - start
    match = _FAILED.search(stdout)
    return (code, match.group(2) if match else None, (match.group(3) or "")[:300] if match else None,
            round(seconds, 1), out)


def _status(code, output):
    if code == 1 and _BROKEN.search(output):
        return "error"  # "caught" by a compile error: the mutant must compile
    return {0: "escaped", 1: "caught"}.get(code, "error")


def _check_import(scratch):
    with tempfile.TemporaryDirectory(prefix="numba-cache-", dir=scratch.parent) as cache:
        proc = subprocess.run([sys.executable, "-c", "import nbnet; print(nbnet.__file__)"], cwd=scratch,
                              env=_env(scratch, cache, {}), capture_output=True, text=True)
    where = proc.stdout.strip()
    print(f"nbnet imported from {where}", file=sys.stderr)
    if proc.returncode or not Path(where).resolve().is_relative_to(scratch.resolve()):
        raise SystemExit(f"the scratch copy's nbnet is not the one imported ({where!r}):\n{proc.stderr}")


def _baseline_groups(mutants):
    """The unmutated runs that cover every selection: per environment, the selections made
    only of node ids/files go in one run; one with a -k expression runs alone."""
    groups = {}
    for mutant in mutants:
        env_key = tuple(sorted(mutant.env.items()))
        if "-k" in mutant.tests:
            groups.setdefault((env_key, mutant.tests), set())
        else:
            groups.setdefault((env_key, None), set()).update(mutant.tests)
    return [(dict(env_key), tests if tests is not None else tuple(sorted(ids)))
            for (env_key, tests), ids in groups.items()]


def main(argv=None):
    global TIMEOUT_S
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated mutant ids")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once (one scratch copy each)")
    parser.add_argument("--keep", action="store_true", help="leave the scratch directory")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run (not recommended)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S,
                        help="seconds a selection may run (a mutant that hangs is reported as an error)")
    args = parser.parse_args(argv)
    TIMEOUT_S = args.timeout

    ids = [m.id for m in MUTANTS]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise SystemExit(f"duplicate mutant ids: {sorted(duplicates)}")
    mutants = MUTANTS
    if args.only:
        wanted = [i.strip() for i in args.only.split(",") if i.strip()]
        unknown = sorted(set(wanted) - set(ids))
        if unknown:
            raise SystemExit(f"unknown mutant ids: {', '.join(unknown)}")
        mutants = [m for m in MUTANTS if m.id in wanted]
    if args.list:
        for m in mutants:  # the snippets checked against the working tree, read-only
            text = (ROOT / "nbnet" / m.file).read_text()
            for old, _ in m.edits:
                if text.count(old) != 1:
                    raise SystemExit(f"mutant {m.id}: its snippet occurs {text.count(old)} times in "
                                     f"nbnet/{m.file} (must be exactly once):\n{old}")
        for m in mutants:
            env = " ".join(f"{k}={v}" for k, v in m.env.items())
            print(f"{m.id}\tnbnet/{m.file}\t{m.description}\t{env + ' ' if env else ''}{' '.join(m.tests)}")
        return 0

    root = Path(tempfile.mkdtemp(prefix="nbnet-mutants-"))
    jobs = max(1, min(args.jobs, len(mutants)))
    copies = []
    try:
        for k in range(jobs):
            copy = root / f"copy{k}"
            copy.mkdir()
            _copy_tree(copy)
            copies.append(copy)
        # Every snippet is checked before anything runs, so a stale list fails at once.
        for m in mutants:
            path, original = _apply(copies[0], m)
            path.write_text(original)
        _check_import(copies[0])

        if not args.no_baseline:
            for env, tests in _baseline_groups(mutants):
                code, failed, message, seconds, tail = _run_pytest(copies[0], tests, env)
                print(f"baseline {' '.join(tests)} {env or ''}: exit {code} in {seconds} s", file=sys.stderr)
                if code != 0:
                    print(tail[-3000:], file=sys.stderr)
                    print(json.dumps({"baseline": "failed", "tests": list(tests), "env": env, "exit": code,
                                      "first_failure": failed, "message": message}, indent=1))
                    return 2

        free = Queue()
        for copy in copies:
            free.put(copy)
        lock = threading.Lock()

        def run(mutant):
            scratch = free.get()
            try:
                path, original = _apply(scratch, mutant)
                try:
                    code, failed, message, seconds, tail = _run_pytest(scratch, mutant.tests, mutant.env)
                finally:
                    path.write_text(original)
            finally:
                free.put(scratch)
            status = _status(code, tail)
            with lock:
                print(f"{mutant.id}: {status} (exit {'timeout' if code == TIMED_OUT else code}, {seconds} s)"
                      f"{' by ' + failed if failed else ''}", file=sys.stderr)
                if status == "error":
                    print(tail[-3000:], file=sys.stderr)
            return {"id": mutant.id, "file": f"nbnet/{mutant.file}", "description": mutant.description,
                    "status": status, "exit": code, "caught_by": failed, "message": message,
                    "tests": list(mutant.tests), "seconds": seconds}

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(run, mutants))
    finally:
        if args.keep:
            print(f"scratch directory kept: {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)

    counts = {s: sum(r["status"] == s for r in results) for s in ("caught", "escaped", "error")}
    print(json.dumps({"summary": counts, "mutants": results}, indent=1))
    return 0 if counts["escaped"] == counts["error"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
