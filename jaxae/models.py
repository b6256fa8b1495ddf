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


def _tap_matmul_conv(inputs, kernel, strides, padding, lhs_dilation=None, rhs_dilation=None,
                     dimension_numbers=None, feature_group_count=1, precision=None):
    """lax.conv_general_dilated for flax's NHWC/HWIO convs, whose kernel gradient is a sum of one matmul per
    kernel tap instead of XLA's weight-gradient convolution (see _conv_tap_dw). Other convs: plain lax."""
    # CPU only: on GPU cuDNN's weight-gradient kernels are fast and this path was not measured there.
    plain = (jax.default_backend() != "cpu" or (lhs_dilation or (1, 1)) != (1, 1) or (rhs_dilation or (1, 1)) != (1, 1) or feature_group_count != 1
             or inputs.ndim != 4)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(inputs.shape[1:3], kernel.shape[:2], strides, padding)
    if plain:
        return lax.conv_general_dilated(inputs, kernel, strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision)
    return _conv_tap_dw(inputs, kernel, tuple(strides), tuple(tuple(p) for p in padding), precision)


_NHWC = ("NHWC", "HWIO", "NHWC")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_tap_dw(x, w, strides, padding, precision):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC, precision=precision)


def _conv_tap_dw_fwd(x, w, strides, padding, precision):
    return _conv_tap_dw(x, w, strides, padding, precision), (x, w)


def _conv_tap_dw_bwd(strides, padding, precision, res, g):
    # XLA:CPU computes a conv's kernel gradient as a convolution whose "kernel" is the whole output
    # gradient (H x W x batch): a tiny output and a huge contraction, far off Eigen's fast path. For the
    # pixel-shuffle conv (4x more output than input channels) that was 5-7x slower than its forward pass.
    # Written as one [B*H*W, Cin]^T @ [B*H*W, Cout] matmul per kernel tap it ran 2x faster (and the whole
    # step ~20 %). For the other convs (Cout <= 2 Cin, or Cout = 3) the tap matmuls were slower than XLA's
    # own, so only Upsample uses this (docs/performance.md). dx is XLA's own, unchanged.
    x, w = res
    dx = jax.vjp(lambda x_: lax.conv_general_dilated(x_, w, strides, padding, dimension_numbers=_NHWC,
                                                     precision=precision), x)[1](g)[0]
    kh, kw, cin, cout = w.shape
    ho, wo = g.shape[1:3]
    sh, sw = strides
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    g2 = g.reshape(-1, cout)
    taps = [lax.slice(xp, (0, i, j, 0), (x.shape[0], i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, cin),
                      (1, sh, sw, 1)).reshape(-1, cin).T @ g2
            for i in range(kh) for j in range(kw)]
    return dx, jnp.stack(taps).reshape(kh, kw, cin, cout).astype(w.dtype)


_conv_tap_dw.defvjp(_conv_tap_dw_fwd, _conv_tap_dw_bwd)


ACTIVATIONS = {"gelu": nn.gelu, "relu": nn.relu, "silu": nn.silu}  # nn.gelu: the tanh approximation


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
        y = nn.Conv(x.shape[-1], (3, 3), dtype=self.dtype)(ACTIVATIONS[self.activation](y))
        return x + y


class Upsample(nn.Module):
    """x2 spatial upsampling to `features` channels.

    pixel_shuffle: a 3x3 conv to 4*features channels, then depth-to-space (ESPCN). Its weight gradient is an
    ordinary stride-1 convolution. nn.ConvTranspose's weight gradient lowers to a window-reversed
    convolution that leaves XLA:CPU's Eigen fast path (jax-ml/jax#23783, openxla/xla#34273) and trained
    about 4x slower on CPU (docs/performance.md); on GPU the two run at the same speed.
    """
    features: int
    kind: str = "pixel_shuffle"
    dtype: jnp.dtype = jnp.float32
    fast_grad: bool = True  # the tap-matmul kernel gradient (_conv_tap_dw); False = XLA's own, for tests

    @nn.compact
    def __call__(self, x):
        if self.kind == "pixel_shuffle":
            # Same parameters and forward pass as nn.Conv; only the kernel gradient is computed differently.
            conv = nn.Conv(4 * self.features, (3, 3), dtype=self.dtype,
                           conv_general_dilated=_tap_matmul_conv if self.fast_grad else None)
            return depth_to_space(conv(x))
        if self.kind == "conv_transpose":
            return nn.ConvTranspose(self.features, (3, 3), strides=(2, 2), dtype=self.dtype)(x)
        b, h, w, c = x.shape
        x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest")
        return nn.Conv(self.features, (3, 3), dtype=self.dtype)(x)


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


def mlp(x, hidden: int, layers: int, kind: str = "plain", dtype=jnp.float32, act=nn.gelu):
    """`layers` hidden layers of `hidden` units with the non-linearity `act`, inside the caller's compact scope
    (so the plain MLP's parameters keep the names Dense_0.. of the module that calls it, as before this option
    existed).

    plain: Dense -> act, repeated. residual: one Dense -> act to `hidden`, then pre-norm residual blocks
    h + Dense(act(LayerNorm(h))), which keep training stable when the stack is deep.
    """
    for i in range(layers):
        if kind == "residual" and i > 0:
            x = x + nn.Dense(hidden, dtype=dtype)(act(nn.LayerNorm(dtype=dtype)(x)))
        else:
            x = act(nn.Dense(hidden, dtype=dtype)(x))
    return x


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
            x = self.act(nn.Conv(self.width * 2 ** i, (3, 3), strides=(2, 2), dtype=self.dtype)(x))
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

    @nn.compact
    def __call__(self, z):
        height, width, channels = self.image_shape
        shapes = stage_shapes(height, width, self.stages)
        h0, w0 = shapes[-1]
        c0 = self.width * 2 ** (self.stages - 1)
        x = FourierFeatures(self.fourier)(z) if self.fourier else z
        x = mlp(x.astype(self.dtype), self.hidden, self.mlp_layers, self.mlp, self.dtype, self.act)
        x = self.act(nn.Dense(h0 * w0 * c0, dtype=self.dtype)(x)).reshape(z.shape[0], h0, w0, c0)
        for i in reversed(range(self.stages)):
            for _ in range(self.blocks):
                x = ResBlock(self.norm, self.dtype, self.activation)(x)
            last = i == 0 and self.head == "upsample"
            features = channels if last else self.width * 2 ** max(i - 1, 0)
            x = Upsample(features, self.upsample, self.dtype)(x)
            th, tw = shapes[i]
            x = x[:, :th, :tw, :]  # odd sizes (28 -> 14 -> 7 -> 4): crop back to the encoder's size
            if not last:
                x = self.act(x)
        if self.head == "conv":
            x = nn.Conv(channels, (3, 3), dtype=self.dtype)(x)
        return nn.sigmoid(x.astype(jnp.float32))


class Autoencoder(_Arch):
    """Encoder + Decoder; `encode` and `decode` are exposed for evaluation (decoding arbitrary points)."""
    image_shape: Sequence[int] = (32, 32, 3)
    latent_dim: int = 3
    upsample: str = "pixel_shuffle"
    head: str = "conv"

    def setup(self):
        self.encoder = Encoder(latent_dim=self.latent_dim, **self.arch())
        self.decoder = Decoder(image_shape=tuple(self.image_shape), upsample=self.upsample, head=self.head,
                               **self.arch())

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)

    def __call__(self, x):
        return self.decode(self.encode(x))


def model_from_config(cfg, image_shape: Sequence[int]) -> Autoencoder:
    """The Autoencoder a Config describes, for images of `image_shape` (H, W, C)."""
    h, w, _ = image_shape
    if min(h, w) < 2 ** cfg.stages:
        from jaxae.config import UsageError
        raise UsageError(f"images of {h}x{w} are too small for --stages {cfg.stages}: use --stages "
                         f"{max(1, min(h, w).bit_length() - 1)} or fewer")
    return Autoencoder(image_shape=tuple(image_shape), latent_dim=cfg.latent_dim, width=cfg.width,
                       stages=cfg.stages, blocks=cfg.blocks, hidden=cfg.hidden, mlp_layers=cfg.mlp_layers, mlp=cfg.mlp,
                       fourier=cfg.fourier, norm=cfg.norm, activation=cfg.activation,
                       upsample=cfg.upsample, head=cfg.head, dtype=jnp.dtype(cfg.dtype))
