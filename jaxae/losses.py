"""Reconstruction losses: ||f(x) - x||_n^n averaged per pixel, n = 2 (l2) or 1 (l1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error per pixel (and channel)."""
    return jnp.mean(jnp.square(pred - target))


def l1(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean absolute error per pixel (and channel)."""
    return jnp.mean(jnp.abs(pred - target))


LOSSES = {"l2": l2, "l1": l1}


def per_example(kind: str, pred: jax.Array, target: jax.Array) -> jax.Array:
    """[B] loss of each example (mean over its pixels)."""
    d = pred - target
    d = jnp.square(d) if kind == "l2" else jnp.abs(d)
    return jnp.mean(d.reshape(d.shape[0], -1), axis=1)
