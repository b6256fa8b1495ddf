"""Convolutional Encoder, Decoder and the Autoencoder that composes them."""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def stage_shapes(height: int, width: int, stages: int) -> list[tuple[int, int]]:
    """Spatial sizes after each stride-2 'SAME' conv: 32 -> 16, 8, 4; 28 -> 14, 7, 4."""
    shapes = [(height, width)]
    for _ in range(stages):
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def depth_to_space(x: jax.Array, r: int = 2) -> jax.Array:
    """[B, H, W, r*r*C] -> [B, r*H, r*W, C] (pixel shuffle)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, r, r, c // (r * r))
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * r, w * r, c // (r * r))


def space_to_depth(x: jax.Array, r: int = 2) -> jax.Array:
    """[B, r*H, r*W, C] -> [B, H, W, r*r*C], the inverse of depth_to_space."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // r, r, w // r, r, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // r, w // r, r * r * c)


def cpu_conv(inputs, kernel, strides, padding, lhs_dilation=None, rhs_dilation=None,
             dimension_numbers=None, feature_group_count=1, precision=None, kernel_grad_taps: bool = False):
    """lax.conv_general_dilated for flax's NHWC/HWIO convs (nn.Conv's `conv_general_dilated`), computed on
    CPU the way that was measured fastest for its shape (_conv_cpu). Other backends and convs: plain lax.
    kernel_grad_taps: the kernel gradient as one matmul per kernel tap (_conv_dw_taps)."""
    # CPU only: on GPU cuDNN's kernels are fast and these formulations were not measured there.
    plain = (jax.default_backend() != "cpu" or (lhs_dilation or (1, 1)) != (1, 1)
             or (rhs_dilation or (1, 1)) != (1, 1) or feature_group_count != 1 or inputs.ndim != 4)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(inputs.shape[1:3], kernel.shape[:2], strides, padding)
    if plain:
        return lax.conv_general_dilated(inputs, kernel, strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision)
    strides, padding = tuple(strides), tuple(tuple(p) for p in padding)
    if _winograd(inputs, kernel, strides, padding):  # before the kernel-gradient paths, which it replaces
        return winograd_conv(inputs, kernel, padding, precision)
    return _conv_cpu(inputs, kernel, strides, padding, precision, kernel_grad_taps)


# Stride-1 3x3 convs of float32 images at least 4x4 with at least 32 input channels (the old default model's residual
# blocks at 16x16, 8x8 and 4x4 and its upsampling convs; the quick model's upsampling convs at 4x4 and 8x8) run as
# Winograd's F(4x4, 3x3): a quarter of the multiplies, as 36 matmuls over the tiles plus transforms of each tile
# that XLA fuses into adds. Fwd + both gradients of one pass of 64 images (2 threads, freed memory kept;
# docs/studies/s23-winograd/convs.py), against the path before it: 16x16 64->64 39.5 -> 24.1 ms, 16x16 64->256
# 101.4 -> 50.2, 8x8 128->128 23.4 -> 15.3.
# - At 8x8 since the twenty-fourth session. Each transform compiles to fused loops of its own, and while a step's
#   16 passes were one unrolled program there were 16 copies of them: with Winograd at 8x8 the program compiled in
#   52 s instead of 33 and kept 300 MB more host memory, past 2 GB of RSS in a train.py run. The passes now run as
#   programs of two (jaxae.train._PassSteps), which cost a fraction of that (docs/performance.md, twenty-fourth
#   session).
# - At 4x4 (one tile per image) since the twenty-fifth session. It had been slower than XLA's there, for its kernel
#   transform: an einsum of two dots of a contraction of 3, as costly as the matmuls where the batch is small beside
#   the kernel. As scaled adds (_winograd_kernel), one 4x4 256->256 conv, fwd + both gradients, XLA's against
#   Winograd's: 16 images 7.4 -> 6.1 ms, 32: 10.2 -> 7.6, 64: 23.2 -> 11.5, 256: 89.9 -> 32.5, 1024: 372.8 -> 117.2
#   (docs/studies/s25-split/kernel.py). 5x5 to 7x7 (28x28 images' third stage) were not measured.
# - From 32 channels since the twenty-seventh session: the quick model's 8x8 32->64 upsampling conv, fwd + both
#   gradients of a pass, 5.5 -> 2.3 ms (docs/studies/s23-winograd/convs.py), its step +4-8 % best and +6-16 % median
#   img/s, interleaved (docs/studies/s27-wino/quick.py); the other presets' programs are unchanged. From 16
#   channels (its 16x16 head conv, 16 -> 12, too) the step gained nothing more (2,850 / 2,731 against 2,932 / 2,721
#   img/s best / median), though that conv alone was faster (3.07 -> 2.19 ms; docs/studies/s27-wino/head.py). An
#   earlier note had found 16 and 32 channels together no faster, with 0.1-0.2 GB more RSS; the quick preset's
#   30-epoch run with 32 peaked at 0.95 GB, as before.
# - float32 only: F(4x4)'s transforms multiply by up to 8 and divide by 24, which bfloat16's 8 bits of mantissa
#   would not survive.
_WINOGRAD_MIN_SIZE = 4
_WINOGRAD_MIN_CHANNELS = 32


def _winograd(x, w, strides, padding) -> bool:
    """Whether cpu_conv computes this conv by winograd_conv (explicit padding; negative padding, a crop, is left to
    XLA)."""
    return (strides == (1, 1) and w.shape[:2] == (3, 3) and min(x.shape[1:3]) >= _WINOGRAD_MIN_SIZE
            and min(min(p) for p in padding) >= 0
            and x.shape[3] >= _WINOGRAD_MIN_CHANNELS and w.shape[3] > _FEW_CHANNELS
            and x.dtype == w.dtype == jnp.float32)


# Winograd's minimal filtering F(4x4, 3x3) (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks",
# CVPR 2016): y = A^T [(G g G^T) * (B^T d B)] A for each 4x4 output tile, d its 6x6 input tile, g the 3x3 kernel
_WINO_M, _WINO_T = 4, 6
_WINO_BT = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
_WINO_G = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
           [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
_WINO_AT = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]


def _rows(mat, parts):
    """[sum_k mat[i][k] * parts[k] for each row i]: a small constant matrix as scaled adds, which XLA fuses
    (as a dot its contraction of 4-6 would run far below the matmul speed)."""
    out = []
    for row in mat:
        terms = [p if c == 1 else -p if c == -1 else c * p for c, p in zip(row, parts) if c]
        out.append(functools.reduce(jnp.add, terms))
    return out


def _out_size(x, padding) -> tuple[int, int]:
    """Height and width of a stride-1 3x3 conv's output of x [B, H, W, C] with this explicit padding."""
    return x.shape[1] + sum(padding[0]) - 2, x.shape[2] + sum(padding[1]) - 2


def _tiles(ho, wo):
    return -(-ho // _WINO_M), -(-wo // _WINO_M)


def _winograd_in(x, padding):
    """[B, H, W, C] -> V [36, B*nh*nw, C]: B^T d B of every 6x6 input tile (the tiles overlap by 2), nh x nw tiles
    per image, the padded image's bottom and right edges extended with zeros to whole tiles."""
    m, t = _WINO_M, _WINO_T
    b, h, wd, c = x.shape
    nh, nw = _tiles(*_out_size(x, padding))
    xp = jnp.pad(x, ((0, 0), (padding[0][0], nh * m + 2 - h - padding[0][0]),
                     (padding[1][0], nw * m + 2 - wd - padding[1][0]), (0, 0)))
    v = jnp.stack(_rows(_WINO_BT, [lax.slice_in_dim(xp, k, k + m * (nh - 1) + 1, m, 1) for k in range(t)]))
    v = jnp.stack(_rows(_WINO_BT, [lax.slice_in_dim(v, k, k + m * (nw - 1) + 1, m, 3) for k in range(t)]))
    return v.reshape(t * t, b * nh * nw, c)  # [6 (along W), 6 (along H), B, nh, nw, C] flattened


def _winograd_kernel(w):
    """[3, 3, Cin, Cout] -> U [36, Cin, Cout]: G g G^T, in V's order of the 36 positions, as scaled adds (_rows). As an
    einsum (two dots of a contraction of 3, with transposes between them) the kernel's transform and its transpose
    took longer than the matmuls at 4x4, where a pass's images are few beside the kernel."""
    u = jnp.stack(_rows(_WINO_G, list(w)))                                    # [6 (along H), 3 (W), Cin, Cout]
    u = jnp.stack(_rows(_WINO_G, [u[:, k] for k in range(3)]))                # [6 (along W), 6 (along H), ...]
    return u.reshape(-1, w.shape[2], w.shape[3])


def _winograd_out(mm, shape):
    """M [36, B*nh*nw, Cout] -> [B, Ho, Wo, Cout]: A^T M A of every tile, the 4x4 tiles put side by side."""
    m, t = _WINO_M, _WINO_T
    b, ho, wo, co = shape
    nh, nw = _tiles(ho, wo)
    mm = mm.reshape(t, t, b, nh, nw, co)
    mm = jnp.stack(_rows(_WINO_AT, list(mm)))                           # [4 (along W), 6 (along H), ...]
    mm = jnp.stack(_rows(_WINO_AT, [mm[:, k] for k in range(t)]), 1)    # [4 (along W), 4 (along H), ...]
    return mm.transpose(2, 3, 1, 4, 0, 5).reshape(b, nh * m, nw * m, co)[:, :ho, :wo]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def winograd_conv(x, w, padding, precision=None):
    """A stride-1 3x3 conv (NHWC x HWIO, explicit ((top, bottom), (left, right)) padding) by Winograd's F(4x4, 3x3):
    one [B*nh*nw, Cin] @ [Cin, Cout] matmul for each of the 36 positions of a tile. Equals lax's conv to float32
    rounding: about 1e-5 of the largest output (tests/test_fastpath.py)."""
    shape = (x.shape[0], *_out_size(x, padding), w.shape[3])
    mm = jnp.matmul(_winograd_in(x, padding), _winograd_kernel(w), precision=precision)
    return _winograd_out(mm, shape)


def _winograd_fwd(x, w, padding, precision):
    return winograd_conv(x, w, padding, precision), (x, w)


def _winograd_bwd(padding, precision, res, g):
    """The same matmuls transposed: dV = dM U^T and dU = V^T dM, the transforms' transposes around them. The
    residuals are x and w, not V (2.25x x's size): the transforms are adds, cheaper to redo than to keep."""
    x, w = res
    v, in_t = jax.vjp(lambda x_: _winograd_in(x_, padding), x)
    u, k_t = jax.vjp(_winograd_kernel, w)
    out_t = jax.linear_transpose(lambda mm: _winograd_out(mm, g.shape),
                                 jax.ShapeDtypeStruct((v.shape[0], v.shape[1], w.shape[3]), g.dtype))
    dm, = out_t(g)
    dv = jnp.matmul(dm, jnp.swapaxes(u, 1, 2), precision=precision)
    du = jnp.matmul(jnp.swapaxes(v, 1, 2), dm, precision=precision)
    return in_t(dv)[0], k_t(du)[0]


winograd_conv.defvjp(_winograd_fwd, _winograd_bwd)


_NHWC = ("NHWC", "HWIO", "NHWC")
# Convs with at most this many output channels (the 3x3 conv to RGB at full resolution) run their forward
# pass as output shifts and their kernel gradient as gradient shifts. XLA:CPU (jax 0.10, YNNPACK) ran them at
# a quarter of its matmul speed or less; measured at 64 images of 32x32, 64 -> 3 channels, 2 threads: forward
# 9.3 ms (XLA) vs 4.4 (shifts), kernel gradient 28 ms (XLA) vs 7 (shifts) vs 100 (taps). In the old default model's
# whole CPU step: +6 % img/s and +30 MB of XLA temp buffer (docs/performance.md, tenth session).
_FEW_CHANNELS = 4


def _lax_conv(x, w, strides, padding, precision):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC, precision=precision)


def _shifted(strides, w) -> bool:
    """Whether the conv runs as output shifts and its kernel gradient as gradient shifts."""
    return strides == (1, 1) and w.shape[3] <= _FEW_CHANNELS


# Strided convs (the encoder's stride-2 downsampling) run as one [B*Ho*Wo, kh*kw*Cin] @ [kh*kw*Cin, Cout] matmul of
# their patches (im2col), and their kernel gradient as patches^T @ g; the input gradient stays XLA's. XLA:CPU ran
# these convs at about half its matmul speed, their kernel gradients (a conv with the output gradient as its
# kernel, rhs_dilate 2) slower still. One pass of 64 images, fwd + both gradients (docs/studies/s26-encode/
# stride2.py): 16x16 64->128 17.9 -> 12.4 ms, 8x8 128->256 12.0 -> 10.7, 32x32 3->64 3.2 -> 2.0. The default step at
# batch 1024, interleaved with the upsampling convs' bias change (_bias_add): 258 -> 264 img/s best, 244 -> 257
# median; the quick preset's at 128, alone: 2574 -> 2607 best; encoding the 10k test images 4.24 -> 4.11 s
# (twenty-sixth session). The patches are rebuilt in the backward pass rather than kept (2.25x the input's size).
_IM2COL = True


def _im2col(strides, w) -> bool:
    """Whether the conv runs as one matmul of its patches (_patches), and its kernel gradient as another."""
    return _IM2COL and strides != (1, 1) and w.dtype == jnp.float32


def _taps(x, kernel_size, strides, padding):
    """[B, H, W, C] -> ([the input under kernel tap (i, j) at every output position, [B, Ho, Wo, C] each, for i, then
    j], (Ho, Wo)): what each kernel tap of a conv multiplies."""
    (kh, kw), (sh, sw) = kernel_size, strides
    b, _, _, c = x.shape
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    return [lax.slice(xp, (0, i, j, 0), (b, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c), (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)], (ho, wo)


def _patches(x, kernel_size, strides, padding):
    """[B, H, W, C] -> [B*Ho*Wo, kh*kw*C]: the input under each output position's kernel window, in the order of an
    HWIO kernel's first three axes (im2col)."""
    taps, (ho, wo) = _taps(x, kernel_size, strides, padding)
    b, c = x.shape[0], x.shape[3]
    return jnp.stack(taps, axis=3).reshape(b * ho * wo, len(taps) * c), (b, ho, wo)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_cpu(x, w, strides, padding, precision, kernel_grad_taps):
    if _shifted(strides, w):
        return _conv_out_shifts(x, w, padding, precision)
    if _im2col(strides, w):
        cols, out = _patches(x, w.shape[:2], strides, padding)
        return jnp.matmul(cols, w.reshape(-1, w.shape[3]), precision=precision).reshape(*out, w.shape[3])
    return _lax_conv(x, w, strides, padding, precision)


def _conv_cpu_fwd(x, w, strides, padding, precision, kernel_grad_taps):
    return _conv_cpu(x, w, strides, padding, precision, kernel_grad_taps), (x, w)


def _conv_cpu_bwd(strides, padding, precision, kernel_grad_taps, res, g):
    x, w = res
    dx = jax.vjp(lambda x_: _lax_conv(x_, w, strides, padding, precision), x)[1](g)[0]  # XLA's own
    if _im2col(strides, w):
        cols, _ = _patches(x, w.shape[:2], strides, padding)
        dw = jnp.matmul(cols.T, g.reshape(-1, w.shape[3]), precision=precision).reshape(w.shape)
    elif kernel_grad_taps:
        dw = _conv_dw_taps(x, g, w.shape, strides, padding)
    elif _shifted(strides, w):
        dw = _conv_dw_grad_shifts(x, g, w.shape, padding)
    else:  # XLA's own
        dw = jax.vjp(lambda w_: _lax_conv(x, w_, strides, padding, precision), w)[1](g)[0]
    return dx, dw.astype(w.dtype)


_conv_cpu.defvjp(_conv_cpu_fwd, _conv_cpu_bwd)


def _conv_out_shifts(x, w, padding, precision=None):
    """Stride-1 conv as one [B*H*W, Cin] @ [Cin, kh*kw*Cout] matmul, then the sum of kh*kw shifted slices
    of its result: XLA's convolution with 3 output channels ran at a quarter of the matmul speed."""
    kh, kw, cin, cout = w.shape
    b, h, wd, _ = x.shape
    y = jnp.matmul(x.reshape(-1, cin), w.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout), precision=precision)
    y = y.reshape(b, h, wd, kh * kw, cout)
    yp = jnp.pad(y, ((0, 0), padding[0], padding[1], (0, 0), (0, 0)))
    ho, wo = h + sum(padding[0]) - kh + 1, wd + sum(padding[1]) - kw + 1
    out = [lax.slice(yp, (0, i, j, i * kw + j, 0), (b, i + ho, j + wo, i * kw + j + 1, cout))
           for i in range(kh) for j in range(kw)]
    return functools.reduce(jnp.add, out).reshape(b, ho, wo, cout)


def _conv_dw_taps(x, g, w_shape, strides, padding):
    """Kernel gradient as one [B*Ho*Wo, Cin]^T @ [B*Ho*Wo, Cout] matmul per kernel tap.

    XLA:CPU computes a conv's kernel gradient as a convolution whose "kernel" is the whole output gradient
    (H x W x batch): a tiny output and a huge contraction. For the pixel-shuffle conv (4x more output than
    input channels) that was 5-7x slower than its forward pass under Eigen (first sessions); the tap matmuls
    ran 2x faster, the whole step ~20 %. Used by Upsample's conv only: for the other convs of the default
    model they were slower than XLA's own then, and within 10 % of it under YNNPACK (tenth session).
    """
    kh, kw, cin, cout = w_shape
    g2 = g.reshape(-1, cout)
    taps, _ = _taps(x, (kh, kw), strides, padding)
    return jnp.stack([t.reshape(-1, cin).T @ g2 for t in taps]).reshape(kh, kw, cin, cout)


def _conv_dw_grad_shifts(x, g, w_shape, padding):
    """Stride-1 kernel gradient for few output channels: x^T @ [the kh*kw shifts of g side by side], one
    [Cin, B*H*W] @ [B*H*W, kh*kw*Cout] matmul: dw[i, j] = sum_q x[q] g[q + pad - (i, j)], with g zero outside
    its bounds and pad the padding above and left of x."""
    kh, kw, cin, cout = w_shape
    b, h, wd, _ = x.shape
    gp = jnp.pad(g, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
    top, left = padding[0][0] + kh - 1, padding[1][0] + kw - 1
    shifts = [lax.slice(gp, (0, top - i, left - j, 0), (b, top - i + h, left - j + wd, cout))
              for i in range(kh) for j in range(kw)]
    r = x.reshape(-1, cin).T @ jnp.concatenate(shifts, axis=-1).reshape(-1, kh * kw * cout)
    return r.reshape(cin, kh, kw, cout).transpose(1, 2, 0, 3)


ACTIVATIONS = {"gelu": nn.gelu, "relu": nn.relu, "silu": nn.silu}  # nn.gelu: the tanh approximation


def conv(features: int, dtype, strides=(1, 1), fast: bool = True, kernel_grad_taps: bool = False,
         bias_last: bool = False, name: str | None = None) -> nn.Conv:
    """A 3x3 'SAME' nn.Conv that runs through cpu_conv (looked up when the conv is built, so tests can swap it
    out); fast=False: lax's own convolution. bias_last: its bias added by _bias_add (_BiasLastConv). The parameters
    are nn.Conv's either way."""
    impl = functools.partial(cpu_conv, kernel_grad_taps=kernel_grad_taps) if fast and cpu_conv else None
    return (_BiasLastConv if bias_last else nn.Conv)(features, (3, 3), strides=strides, dtype=dtype,
                                                     use_bias=not bias_last, conv_general_dilated=impl, name=name)


def _norm(kind: str, dtype) -> nn.Module | None:
    if kind == "layer":
        return nn.LayerNorm(dtype=dtype)
    if kind == "group":
        return nn.GroupNorm(num_groups=8, dtype=dtype)
    return None


class ResBlock(nn.Module):
    """x + conv3x3(act(norm(x))): keeps the shape, eases optimisation of deeper stages."""
    norm: str = "layer"
    dtype: jnp.dtype = jnp.float32
    activation: str = "gelu"

    @nn.compact
    def __call__(self, x):
        y = x
        norm = _norm(self.norm, self.dtype)
        if norm is not None:
            y = norm(y)
        y = conv(x.shape[-1], self.dtype)(ACTIVATIONS[self.activation](y))
        return x + y


# The pixel-shuffle convs' bias gradient, the sum of the output gradient over batch, height and width, reached
# XLA:CPU through depth_to_space's transpose as a reduction of a 6-D view, [B, H, W, 2, 2, C]; XLA split it for its
# two threads into a reduce-window over windows of 32 x H x W, which it runs element by element at a stride of 4C
# floats: 9 ms a pass for the 16x16 conv's, 168 ms of a 4.4 s step at batch 1024 for the three (bench/
# profile_step.py). _bias_add's backward pass sums a [B*H*W, 4C] view instead: one plain reduction, no reduce-window.
@jax.custom_vjp
def _bias_add(y, b):
    """y + b, b along y's last axis; its gradient as the sum of g's [N, C] view (see above)."""
    return y + b


def _bias_add_fwd(y, b):
    return y + b, None


def _bias_add_bwd(_, g):
    return g, g.reshape(-1, g.shape[-1]).sum(0)


_bias_add.defvjp(_bias_add_fwd, _bias_add_bwd)
_BIAS_LAST = True  # off: nn.Conv's own bias (for docs/studies/s26-encode/ab.py and the tests)


class _BiasLastConv(nn.Conv):
    """nn.Conv, the same parameters (kernel, then bias) and forward pass, with the bias added by _bias_add."""

    @nn.compact
    def __call__(self, x):
        y = super().__call__(x)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        return _bias_add(y, bias.astype(y.dtype))


class Upsample(nn.Module):
    """x2 spatial upsampling to `features` channels.

    pixel_shuffle: a 3x3 conv to 4*features channels, then depth-to-space (ESPCN). Its weight gradient is an
    ordinary stride-1 convolution, computed on CPU as one matmul per kernel tap (_conv_dw_taps), except where
    the whole conv runs as Winograd's (cpu_conv: at 4x4 and larger with 64 channels or more).
    nn.ConvTranspose's weight gradient lowers to a window-reversed convolution that leaves XLA:CPU's Eigen
    fast path (jax-ml/jax#23783, openxla/xla#34273) and trained about 4x slower on CPU
    (docs/performance.md); on GPU the two run at the same speed.
    """
    features: int
    kind: str = "pixel_shuffle"
    dtype: jnp.dtype = jnp.float32
    fast_grad: bool = True  # the tap-matmul kernel gradient (_conv_dw_taps); False = XLA's own, for tests

    @nn.compact
    def __call__(self, x, shuffle: bool = True):
        """shuffle False (pixel_shuffle only): the conv's output [B, H, W, 4 * features], before depth-to-space."""
        if self.kind == "pixel_shuffle":
            # Same parameters and forward pass as nn.Conv; only the kernel gradient is computed differently.
            # on CPU with the bias gradient of _bias_add, named as the nn.Conv it replaces (the same parameters)
            up = conv(4 * self.features, self.dtype, fast=self.fast_grad, kernel_grad_taps=True,
                      bias_last=_BIAS_LAST and jax.default_backend() == "cpu", name="Conv_0")
            return depth_to_space(up(x)) if shuffle else up(x)
        if self.kind == "conv_transpose":
            return nn.ConvTranspose(self.features, (3, 3), strides=(2, 2), dtype=self.dtype)(x)
        b, h, w, c = x.shape
        x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest")
        return conv(self.features, self.dtype)(x)


class _Arch(nn.Module):
    """The size and kind of network the Encoder, the Decoder and the Autoencoder share (fields only)."""
    width: int = 64
    stages: int = 3
    blocks: int = 1
    hidden: int = 512
    mlp_layers: int = 3
    mlp: str = "plain"
    fourier: int = 0
    norm: str = "layer"
    activation: str = "gelu"
    dtype: jnp.dtype = jnp.float32

    def arch(self) -> dict:
        return {name: getattr(self, name) for name in _ARCH_FIELDS}

    def act(self, x):
        return ACTIVATIONS[self.activation](x)


_ARCH_FIELDS = ("width", "stages", "blocks", "hidden", "mlp_layers", "mlp", "fourier", "norm", "activation", "dtype")


def _call(mdl, x, **kwargs):
    return mdl(x, **kwargs)


def mlp(x, hidden: int, layers: int, kind: str = "plain", dtype=jnp.float32, act=nn.gelu, layer=_call):
    """`layers` hidden layers of `hidden` units with the non-linearity `act`, inside the caller's compact scope
    (so the plain MLP's parameters keep the names Dense_0.. of the module that calls it, as before this option
    existed). layer(module, x): how each layer is called (the Decoder's records or replays them).

    plain: Dense -> act, repeated. residual: one Dense -> act to `hidden`, then pre-norm residual blocks
    h + Dense(act(LayerNorm(h))), which keep training stable when the stack is deep.
    """
    for i in range(layers):
        if kind == "residual" and i > 0:
            x = x + layer(nn.Dense(hidden, dtype=dtype), act(layer(nn.LayerNorm(dtype=dtype), x)))
        else:
            x = act(layer(nn.Dense(hidden, dtype=dtype), x))
    return x


def _replayed(mdl, x, value, **kwargs):
    """mdl(x, **kwargs) whose output is `value`, computed before (the rows of the same layer's output for these
    inputs in a larger batch), and whose gradient is the layer's own at x. Differentiated under jit, the layer's
    forward pass is not run again: its output is unused, and XLA drops it; what the gradient needs (a dense or
    conv layer's input and kernel; inside a residual block or Fourier features, the norm, activation or sines
    before the last linear map) is still computed. Forward-mode autodiff (jax.jvp) cannot go through it, as
    through the CPU convs' custom VJPs."""
    def fwd(m, x, v):
        _, vjp = nn.vjp(lambda m, x: m(x, **kwargs), m, x)
        return v, vjp

    def bwd(vjp, ct):
        params_t, x_t = vjp(ct)
        return params_t, x_t, jnp.zeros_like(ct)

    return nn.custom_vjp(lambda m, x, v: v, forward_fn=fwd, backward_fn=bwd)(mdl, x, value)


class _Tape:
    """How a Decoder call runs its layers: plainly, recording each layer's output (record), or replaying the
    outputs recorded for these codes (replay, in the order recorded): see Autoencoder.__call__."""

    def __init__(self, replay: Sequence[jax.Array] | None = None):
        self.replay, self.outputs = replay, []

    def __call__(self, mdl, x, **kwargs):
        if self.replay is None:
            y = mdl(x, **kwargs)
        else:
            y = _replayed(mdl, x, self.replay[len(self.outputs)], **kwargs)
        self.outputs.append(y)
        return y


class FourierFeatures(nn.Module):
    """z -> [z, sin(zW), cos(zW)] with a learned [latent_dim, n] frequency matrix W (init N(0, scale^2)).

    A decoder fed the raw 3-D code is a smooth function of 3 numbers (MLPs are biased towards low
    frequencies); sinusoids of the code let it vary faster along the code's axes (Tancik et al. 2020).
    """
    n: int
    scale: float = 1.0

    @nn.compact
    def __call__(self, z):
        w = self.param("frequencies", nn.initializers.normal(self.scale), (z.shape[-1], self.n), jnp.float32)
        h = z.astype(jnp.float32) @ w
        return jnp.concatenate([z, jnp.sin(h), jnp.cos(h)], axis=-1)


class Encoder(_Arch):
    """[B, H, W, C] images in [0, 1] -> [B, latent_dim] codes."""
    latent_dim: int = 3

    @nn.compact
    def __call__(self, x):
        x = (x.astype(self.dtype) - 0.5) * 2.0
        for i in range(self.stages):
            x = self.act(conv(self.width * 2 ** i, self.dtype, strides=(2, 2))(x))
            for _ in range(self.blocks):
                x = ResBlock(self.norm, self.dtype, self.activation)(x)
        x = mlp(x.reshape(x.shape[0], -1), self.hidden, self.mlp_layers, self.mlp, self.dtype, self.act)
        return nn.Dense(self.latent_dim, dtype=jnp.float32)(x).astype(jnp.float32)


class Decoder(_Arch):
    """[B, latent_dim] codes -> [B, H, W, C] images in [0, 1] (a sigmoid output).

    head "conv": the last upsampling gives `width` channels at full resolution, then a 3x3 conv gives the
    image. head "upsample": the last upsampling gives the image channels itself (ESPCN's sub-pixel output),
    so no conv runs at full resolution; on 2 CPU cores those two layers were the costliest of the step.
    """
    image_shape: Sequence[int] = (32, 32, 3)
    upsample: str = "pixel_shuffle"
    head: str = "conv"

    def sub_pixel_output(self) -> bool:
        """Whether __call__(z, shuffle=False) is allowed: the image is the last pixel-shuffle conv's output
        depth-to-space, with nothing cropped (an even height and width)."""
        height, width, _ = self.image_shape
        return self.head == "upsample" and self.upsample == "pixel_shuffle" and height % 2 == 0 and width % 2 == 0

    @nn.compact
    def __call__(self, z, shuffle: bool = True, tape: _Tape | None = None):
        """shuffle False (sub_pixel_output only): the image as space_to_depth of it, [B, H/2, W/2, 4C], without
        the last depth-to-space (a transpose): what an error to an image needs, summed in any order.
        tape: runs each layer (a module call) through it, to record the layers' outputs or to replay them."""
        height, width, channels = self.image_shape
        if not shuffle and not self.sub_pixel_output():
            raise ValueError("shuffle=False needs head 'upsample', pixel_shuffle upsampling and an even image size")
        layer = tape or _call
        shapes = stage_shapes(height, width, self.stages)
        h0, w0 = shapes[-1]
        c0 = self.width * 2 ** (self.stages - 1)
        x = layer(FourierFeatures(self.fourier), z) if self.fourier else z
        x = mlp(x.astype(self.dtype), self.hidden, self.mlp_layers, self.mlp, self.dtype, self.act, layer)
        x = self.act(layer(nn.Dense(h0 * w0 * c0, dtype=self.dtype), x)).reshape(z.shape[0], h0, w0, c0)
        for i in reversed(range(self.stages)):
            for _ in range(self.blocks):
                x = layer(ResBlock(self.norm, self.dtype, self.activation), x)
            last = i == 0 and self.head == "upsample"
            features = channels if last else self.width * 2 ** max(i - 1, 0)
            x = layer(Upsample(features, self.upsample, self.dtype), x, shuffle=shuffle or not last)
            if not shuffle and last:
                break
            th, tw = shapes[i]
            x = x[:, :th, :tw, :]  # odd sizes (28 -> 14 -> 7 -> 4): crop back to the encoder's size
            if not last:
                x = self.act(x)
        if self.head == "conv":
            x = layer(conv(channels, self.dtype), x)
        return nn.sigmoid(x.astype(jnp.float32))


_CHOOSE_IN_CELLS = True  # off: encode compares the heads' drawings as images (docs/studies/s32-heads/step.py)


class Autoencoder(_Arch):
    """Encoder + Decoder; `encode` and `decode` are exposed for evaluation (decoding arbitrary points).

    encoder_heads K > 1: the encoder proposes K codes for each image, the decoder draws all K, and the code whose
    drawing is nearest the input (`choose_by`: mean squared or absolute error) is the image's code. Training
    through __call__ is then winner-take-all: the loss and its gradient are those of the chosen code only, as in
    multiple-choice learning (Guzman-Rivera et al. 2012). Why: the decoder's 3-D sheet of images folds back near
    itself, and a continuous encoder must send all the images near a fold to one side of it; most of what
    searching each image's best code gained (--best-codes, docs/quality.md, nineteenth session) was there. With 2
    heads each wins about half the images, and the quick preset's test MSE fell 5 % (docs/quality.md,
    twenty-ninth session). The code is still `latent_dim` numbers and the decoder still draws from it alone; the
    price is K decoder passes per image when encoding, in training too.
    """
    image_shape: Sequence[int] = (32, 32, 3)
    latent_dim: int = 3
    upsample: str = "pixel_shuffle"
    head: str = "conv"
    encoder_heads: int = 1
    choose_by: str = "l2"

    def setup(self):
        self.encoder = Encoder(latent_dim=self.latent_dim * self.encoder_heads, **self.arch())
        self.decoder = Decoder(image_shape=tuple(self.image_shape), upsample=self.upsample, head=self.head,
                               **self.arch())

    def proposals(self, x):
        """[B, encoder_heads, latent_dim]: the codes the encoder proposes for each image (encode keeps one)."""
        return self.encoder(x).reshape(x.shape[0], self.encoder_heads, self.latent_dim)

    def _choose(self, x, cells: bool = False, tape: _Tape | None = None):
        """(code [B, latent_dim], its drawing [B, H, W, C], the chosen head [B]) of each image: of a model with
        encoder heads, the proposal drawn nearest it. tape: the decoder's pass over the B * K proposals runs
        through it.

        cells (a sub-pixel output head only): compare the drawings as they come out of the last pixel-shuffle
        conv, with the B images rearranged to match (space_to_depth), not the B * K drawings depth-to-space: the
        same errors, summed in another order. For encode: that transpose, which XLA:CPU wrote out before the
        error's reduction, took a tenth of the quick preset's encode, which ran 5-9 % faster without it, with the
        same codes. Not for reconstruct, whose drawing is written out anyway: from 5 % slower to 3 % faster over
        four runs (docs/performance.md, thirty-second session)."""
        b, k = x.shape[0], self.encoder_heads
        z = self.proposals(x)
        cells = self._in_cells(cells)
        target = space_to_depth(x) if cells else x
        y = self.decoder(z.reshape(b * k, self.latent_dim), shuffle=not cells, tape=tape)
        y = y.reshape(b, k, *target.shape[1:])
        d = y - target.astype(y.dtype)[:, None]
        err = (jnp.abs(d) if self.choose_by == "l1" else jnp.square(d)).mean(axis=tuple(range(2, d.ndim)))
        best = jnp.argmin(err, axis=1)
        return _pick(z, best), depth_to_space(_pick(y, best)) if cells else _pick(y, best), best

    def _in_cells(self, cells: bool) -> bool:
        """Whether a choice asked to compare in cells (_choose) does: with a sub-pixel output head only."""
        return cells and _CHOOSE_IN_CELLS and self.decoder.sub_pixel_output()

    def encode(self, x):
        return self.encoder(x) if self.encoder_heads == 1 else self._choose(x, cells=True)[0]

    def decode(self, z):
        return self.decoder(z)

    def reconstruct(self, x):
        """decode(encode(x)), without differentiating it: with encoder heads, the drawing made while choosing (the
        test pass after each epoch: 2.87 -> 2.28 s for the quick preset on 2 CPU cores, thirtieth session, when
        __call__ drew the chosen code again)."""
        return self(x) if self.encoder_heads == 1 else self._choose(x)[1]

    def __call__(self, x):
        """decode(encode(x)). With encoder heads, what training differentiates: the choice is an argmin, so no
        gradient flows through the K drawings it compares, and the gradient is the chosen drawing's alone
        (winner-take-all). The decoder's pass over the B * K proposals records each layer's output; the chosen
        code is then drawn by replaying its rows (_replayed), so the backward pass runs through one drawing per
        image, at the forward pass's values, and under jit the dense and conv layers' forward passes do not run a
        (K + 1)-th time: 93-97 % of a decoder pass saved (docs/performance.md, thirty-seventh session)."""
        if self.encoder_heads == 1 or not _REPLAY:
            return self.decode(self.encode(x))
        b, k = x.shape[0], self.encoder_heads
        cells = self._in_cells(True)
        tape = _Tape()
        z, _, best = self._choose(x, cells=cells, tape=tape)
        rows = [lax.stop_gradient(_pick(y.reshape(b, k, *y.shape[1:]), best)) for y in tape.outputs]
        y = self.decoder(z, shuffle=not cells, tape=_Tape(rows))
        return depth_to_space(y) if cells else y


def _pick(a: jax.Array, best: jax.Array) -> jax.Array:
    """a [B, K, ...] -> [B, ...]: each row's entry best [B]."""
    return jnp.take_along_axis(a, best.reshape(-1, 1, *(1,) * (a.ndim - 2)), axis=1)[:, 0]


_REPLAY = True  # off: __call__ draws the chosen code again (docs/performance.md, thirty-seventh session)


def model_from_config(cfg, image_shape: Sequence[int]) -> Autoencoder:
    """The Autoencoder a Config describes, for images of `image_shape` (H, W, C). Its model fields are validated
    here too (from Python, latent_dim=0 was a ZeroDivisionError deep in flax's initialisers); not the training
    ones, so that a model is built for any run's config."""
    from jaxae.config import Config, UsageError
    Config(**cfg.model_settings(), dtype=cfg.dtype).validate()
    if len(image_shape) != 3:
        raise UsageError(f"image_shape {tuple(image_shape)} is not (height, width, channels): grayscale images "
                         f"need a channel axis of 1 (images[..., None])")
    h, w, _ = image_shape
    if min(h, w) < 2 ** cfg.stages:
        if min(h, w) < 2:
            raise UsageError(f"images of {h}x{w} are too small: each stage halves them, so they must be at least "
                             f"2x2")
        raise UsageError(f"images of {h}x{w} are too small for --stages {cfg.stages}: use --stages "
                         f"{max(1, min(h, w).bit_length() - 1)} or fewer")
    return Autoencoder(image_shape=tuple(image_shape), latent_dim=cfg.latent_dim, width=cfg.width,
                       stages=cfg.stages, blocks=cfg.blocks, hidden=cfg.hidden, mlp_layers=cfg.mlp_layers, mlp=cfg.mlp,
                       fourier=cfg.fourier, norm=cfg.norm, activation=cfg.activation,
                       upsample=cfg.upsample, head=cfg.head, encoder_heads=cfg.encoder_heads, choose_by=cfg.loss,
                       dtype=jnp.dtype(cfg.dtype))
