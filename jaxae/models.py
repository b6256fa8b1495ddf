"""Convolutional Encoder, Decoder and the Autoencoder that composes them."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


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


def _norm(kind: str, dtype) -> nn.Module | None:
    if kind == "layer":
        return nn.LayerNorm(dtype=dtype)
    if kind == "group":
        return nn.GroupNorm(num_groups=8, dtype=dtype)
    return None


class ResBlock(nn.Module):
    """x + conv3x3(gelu(norm(x))): keeps the shape, eases optimisation of deeper stages."""
    norm: str = "layer"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = x
        norm = _norm(self.norm, self.dtype)
        if norm is not None:
            y = norm(y)
        y = nn.Conv(x.shape[-1], (3, 3), dtype=self.dtype)(nn.gelu(y))
        return x + y


class Upsample(nn.Module):
    """x2 spatial upsampling to `features` channels.

    pixel_shuffle: a 3x3 conv to 4*features channels, then depth-to-space (ESPCN). Its weight gradient is an
    ordinary stride-1 convolution. nn.ConvTranspose's weight gradient lowers to a window-reversed
    convolution that leaves XLA:CPU's Eigen fast path (jax-ml/jax#23783, openxla/xla#34273) and trained
    about 4x slower on CPU (bench/upsample.py, docs/performance.md); on GPU the two run at the same speed.
    """
    features: int
    kind: str = "pixel_shuffle"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.kind == "pixel_shuffle":
            return depth_to_space(nn.Conv(4 * self.features, (3, 3), dtype=self.dtype)(x))
        if self.kind == "conv_transpose":
            return nn.ConvTranspose(self.features, (3, 3), strides=(2, 2), dtype=self.dtype)(x)
        b, h, w, c = x.shape
        x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest")
        return nn.Conv(self.features, (3, 3), dtype=self.dtype)(x)


class Encoder(nn.Module):
    """[B, H, W, C] images in [0, 1] -> [B, latent_dim] codes."""
    latent_dim: int = 3
    width: int = 64
    stages: int = 3
    blocks: int = 1
    hidden: int = 512
    mlp_layers: int = 3
    norm: str = "layer"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = (x.astype(self.dtype) - 0.5) * 2.0
        for i in range(self.stages):
            x = nn.gelu(nn.Conv(self.width * 2 ** i, (3, 3), strides=(2, 2), dtype=self.dtype)(x))
            for _ in range(self.blocks):
                x = ResBlock(self.norm, self.dtype)(x)
        x = x.reshape(x.shape[0], -1)
        for _ in range(self.mlp_layers):
            x = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype)(x))
        return nn.Dense(self.latent_dim, dtype=jnp.float32)(x).astype(jnp.float32)


class Decoder(nn.Module):
    """[B, latent_dim] codes -> [B, H, W, C] images in [0, 1] (a sigmoid output)."""
    image_shape: Sequence[int] = (32, 32, 3)
    width: int = 64
    stages: int = 3
    blocks: int = 1
    hidden: int = 512
    mlp_layers: int = 3
    norm: str = "layer"
    upsample: str = "pixel_shuffle"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z):
        height, width, channels = self.image_shape
        shapes = stage_shapes(height, width, self.stages)
        h0, w0 = shapes[-1]
        c0 = self.width * 2 ** (self.stages - 1)
        x = z.astype(self.dtype)
        for _ in range(self.mlp_layers):
            x = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype)(x))
        x = nn.gelu(nn.Dense(h0 * w0 * c0, dtype=self.dtype)(x)).reshape(z.shape[0], h0, w0, c0)
        for i in reversed(range(self.stages)):
            for _ in range(self.blocks):
                x = ResBlock(self.norm, self.dtype)(x)
            features = self.width * 2 ** max(i - 1, 0)
            x = Upsample(features, self.upsample, self.dtype)(x)
            th, tw = shapes[i]
            x = nn.gelu(x[:, :th, :tw, :])  # odd sizes (28 -> 14 -> 7 -> 4): crop back to the encoder's size
        x = nn.Conv(channels, (3, 3), dtype=self.dtype)(x)
        return nn.sigmoid(x.astype(jnp.float32))


class Autoencoder(nn.Module):
    """Encoder + Decoder; `encode` and `decode` are exposed for evaluation (decoding arbitrary points)."""
    image_shape: Sequence[int] = (32, 32, 3)
    latent_dim: int = 3
    width: int = 64
    stages: int = 3
    blocks: int = 1
    hidden: int = 512
    mlp_layers: int = 3
    norm: str = "layer"
    upsample: str = "pixel_shuffle"
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        common = dict(width=self.width, stages=self.stages, blocks=self.blocks, hidden=self.hidden,
                      mlp_layers=self.mlp_layers, norm=self.norm, dtype=self.dtype)
        self.encoder = Encoder(latent_dim=self.latent_dim, **common)
        self.decoder = Decoder(image_shape=tuple(self.image_shape), upsample=self.upsample, **common)

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
                       stages=cfg.stages, blocks=cfg.blocks, hidden=cfg.hidden, mlp_layers=cfg.mlp_layers, norm=cfg.norm,
                       upsample=cfg.upsample, dtype=jnp.dtype(cfg.dtype))
