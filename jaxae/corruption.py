"""Input corruptions for denoising autoencoders: (key, x, strength) -> x_noisy, all in [0, 1].

Each is drawn per example from the key it is given, so the corrupted batch does not depend on how the
batch is split across devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gaussian(key: jax.Array, x: jax.Array, strength: float) -> jax.Array:
    """Add N(0, strength^2) noise and clip back to [0, 1]."""
    return jnp.clip(x + strength * jax.random.normal(key, x.shape, x.dtype), 0.0, 1.0)


def mask(key: jax.Array, x: jax.Array, strength: float) -> jax.Array:
    """Zero a fraction `strength` of the pixels (all channels of a pixel together)."""
    keep = jax.random.uniform(key, x.shape[:-1] + (1,)) >= strength
    return jnp.where(keep, x, 0.0).astype(x.dtype)


def salt_pepper(key: jax.Array, x: jax.Array, strength: float) -> jax.Array:
    """Set a fraction `strength` of the pixels to 0 or 1 (half each, all channels of a pixel together)."""
    k_hit, k_val = jax.random.split(key)
    hit = jax.random.uniform(k_hit, x.shape[:-1] + (1,)) < strength
    salt = jax.random.bernoulli(k_val, 0.5, x.shape[:-1] + (1,)).astype(x.dtype)
    return jnp.where(hit, salt, x).astype(x.dtype)


CORRUPTIONS = {"gaussian": gaussian, "mask": mask, "salt_pepper": salt_pepper}


LEVELS = ("fixed", "uniform")


def corrupt(kind: str, keys: jax.Array, x: jax.Array, strength: float, levels: str = "fixed") -> jax.Array:
    """Corrupt a batch [B, ...] with one key per example (keys: [B] key array). strength 0 is the identity; it
    may be traced (evaluate.py's noise curve: one program for every strength).

    levels "fixed": every example at `strength`; "uniform": each example at its own strength, drawn uniformly
    from [0, strength) with a key split from its own (so near-clean inputs are among those trained on)."""
    if not isinstance(strength, jax.core.Tracer) and strength == 0:  # a traced 0 corrupts nothing either
        return x
    if levels not in LEVELS:
        raise ValueError(f"levels must be one of {LEVELS}, not {levels!r}")
    fn = CORRUPTIONS[kind]
    if levels == "fixed":
        return jax.vmap(lambda k, xi: fn(k, xi, strength))(keys, x)

    def one(k, xi):
        k_level, k_noise = jax.random.split(k)
        return fn(k_noise, xi, strength * jax.random.uniform(k_level, dtype=xi.dtype))
    return jax.vmap(one)(keys, x)
