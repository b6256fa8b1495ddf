"""Train a fresh encoder (any size) against a trained run's frozen decoder: does encoder capacity close the gap?

    # arguments: workdir, epochs, encoder width, residual blocks per stage, MLP width
    PYTHONPATH=. python docs/studies/s19-encoder-gap/newenc.py /tmp/s16/review-runs/q30 10 64 1 512
"""
import sys, time
import jax, jax.numpy as jnp, numpy as np, optax
from jaxae import evaluate as ev
from jaxae.models import model_from_config, Encoder
from jaxae import hostmem
hostmem.keep_freed_memory(); hostmem.run_cpu_programs_inline()
workdir = sys.argv[1]
epochs, width, blocks, hidden = (int(a) for a in sys.argv[2:6])
lr, B = 1e-3, 128
cfg, state, ds = ev.restore(workdir)
model = model_from_config(cfg, ds.image_shape)
dec_p = state.params["decoder"]
enc = Encoder(latent_dim=cfg.latent_dim, width=width, stages=cfg.stages, blocks=blocks, hidden=hidden,
              mlp_layers=cfg.mlp_layers, mlp=cfg.mlp, norm=cfg.norm, activation=cfg.activation)
enc_p = enc.init(jax.random.PRNGKey(1), jnp.zeros((1, *ds.image_shape)))["params"]
print("encoder params", sum(x.size for x in jax.tree.leaves(enc_p)), flush=True)
def recon(e, x):
    return model.apply({"params": {"decoder": dec_p}}, enc.apply({"params": e}, x), method="decode")
@jax.jit
def test_err(e, x):
    return jnp.sum(jnp.mean((recon(e, x) - x) ** 2, axis=(1, 2, 3)))
def test_mse(e):
    return sum(float(test_err(e, jnp.asarray(ds.test_images[i:i+1000], jnp.float32) / 255.0))
               for i in range(0, len(ds.test_images), 1000)) / len(ds.test_images)
spe = len(ds.train_images) // B
opt = optax.chain(optax.clip_by_global_norm(1.0),
                  optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, spe, epochs * spe), weight_decay=1e-4))
os_ = opt.init(enc_p)
train = jnp.asarray(ds.train_images)
@jax.jit
def step(e, os_, idx, fk):
    x = train[idx].astype(jnp.float32) / 255.0
    flip = jax.random.bernoulli(fk, 0.5, (x.shape[0], 1, 1, 1)); x = jnp.where(flip, x[:, :, ::-1], x)
    l, g = jax.value_and_grad(lambda e: jnp.mean((recon(e, x) - x) ** 2))(e)
    u, os_ = opt.update(g, os_, e); return optax.apply_updates(e, u), os_, l
key = jax.random.PRNGKey(0)
for ep in range(epochs):
    t = time.time(); key, k = jax.random.split(key); perm = jax.random.permutation(k, len(ds.train_images)); ls = []
    for s in range(spe):
        key, fk = jax.random.split(key); enc_p, os_, l = step(enc_p, os_, perm[s*B:(s+1)*B], fk); ls.append(l)
    print(f"epoch {ep+1}: train {float(np.mean(jnp.stack(ls))):.5f}  test MSE {test_mse(enc_p):.5f}  "
          f"{time.time()-t:.0f}s", flush=True)
