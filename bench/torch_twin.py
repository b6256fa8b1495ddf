"""PyTorch twin of jaxae's Autoencoder, for side-by-side throughput (bench/throughput.py). Bench-only: jaxae
never imports torch.

Same layers, widths, activations, norms, upsampling and encoder heads as jaxae.models.Autoencoder; the same step (flip
augmentation, MSE, AdamW + global-norm clipping) on a uint8 dataset held on the device. Compute-identical,
not bit-identical: stride-2 'SAME' convs pad (1, 1) here where XLA pads (0, 1), and PixelShuffle orders
channels differently; neither changes the FLOPs or the memory traffic.

    from bench.torch_twin import time_training
    time_training(width=64, batch_size=256, steps=20, repeats=3, compile=False)
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn


def _stage_shapes(h: int, w: int, stages: int) -> list[tuple[int, int]]:
    shapes = [(h, w)]
    for _ in range(stages):
        h, w = (h + 1) // 2, (w + 1) // 2
        shapes.append((h, w))
    return shapes


class ChannelLayerNorm(nn.Module):
    """flax nn.LayerNorm on NHWC: normalise each pixel over its channels."""

    def __init__(self, c: int):
        super().__init__()
        self.ln = nn.LayerNorm(c, eps=1e-6)

    def forward(self, x):
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _norm(kind: str, c: int) -> nn.Module:
    if kind == "layer":
        return ChannelLayerNorm(c)
    if kind == "group":
        return nn.GroupNorm(8, c, eps=1e-6)
    return nn.Identity()


# jaxae's nn.gelu is the tanh approximation; torch's default GELU is the exact (erf) one
ACTIVATIONS = {"gelu": lambda: nn.GELU(approximate="tanh"), "relu": nn.ReLU, "silu": nn.SiLU}


def _call(layer, x):
    return layer(x)


class _Replayed(torch.autograd.Function):
    """A Linear or stride-1 Conv2d layer's output for x given as `value`, computed before (its rows in the pass
    over all K proposals), with the layer's own gradient at x: jaxae.models._replayed, where XLA drops the unused
    forward pass; here the backward pass is the layer's, written out (aten.convolution_backward, as autograd's)."""

    @staticmethod
    def forward(ctx, x, value, weight, bias, conv):
        ctx.save_for_backward(x, weight)
        ctx.conv, ctx.has_bias = conv, bias is not None
        return value.view_as(value)

    @staticmethod
    def backward(ctx, g):
        # under bf16 autocast g and the recorded rows are bf16, the weight (and an input) float32: compute in g's
        # dtype, as autocast's own backward does, and give each gradient its tensor's dtype
        x0, w0 = ctx.saved_tensors
        x, weight, conv = x0.to(g.dtype), w0.to(g.dtype), ctx.conv
        if conv is None:
            gx, gw, gb = g @ weight, g.t() @ x, g.sum(0)
        else:
            gx, gw, gb = torch.ops.aten.convolution_backward(
                g, x, weight, [weight.shape[0]], conv.stride, conv.padding, conv.dilation, False, [0, 0],
                conv.groups, [True, True, True])
        return gx.to(x0.dtype), None, gw.to(w0.dtype), gb.to(w0.dtype) if ctx.has_bias else None, None


class _Tape:
    """How decode runs its Linear and Conv2d layers: plainly, recording each one's output, or replaying outputs
    recorded before, in the order recorded (jaxae.models._Tape). Other layers (a transposed conv; a conv with
    other than zero padding of given sizes, which _Replayed's backward does not do) run plainly."""

    def __init__(self, replay=None):
        self.replay, self.outputs = replay, []

    def __call__(self, layer, x):
        if self.replay is None:
            y = layer(x)
        elif isinstance(layer, nn.Linear) or (type(layer) is nn.Conv2d and layer.stride == (1, 1)
                                              and layer.padding_mode == "zeros" and not isinstance(layer.padding, str)):
            y = _Replayed.apply(x, self.replay[len(self.outputs)], layer.weight, layer.bias,
                                None if isinstance(layer, nn.Linear) else layer)
        else:
            y = layer(x)
        self.outputs.append(y)
        return y


class ResBlock(nn.Module):
    def __init__(self, c: int, norm: str, activation: str = "gelu"):
        super().__init__()
        self.norm, self.act, self.conv = _norm(norm, c), ACTIVATIONS[activation](), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, layer=None):
        return x + (layer or _call)(self.conv, self.act(self.norm(x)))


class Upsample(nn.Module):
    def __init__(self, cin: int, cout: int, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "pixel_shuffle":
            self.conv = nn.Conv2d(cin, 4 * cout, 3, padding=1)
        elif kind == "conv_transpose":
            self.conv = nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)
        else:
            self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x, layer=None):
        layer = layer or _call
        if self.kind == "pixel_shuffle":
            return F.pixel_shuffle(layer(self.conv, x), 2)
        if self.kind == "conv_transpose":
            return layer(self.conv, x)
        return layer(self.conv, F.interpolate(x, scale_factor=2, mode="nearest"))


class Autoencoder(nn.Module):
    """jaxae.models.Autoencoder in PyTorch (NCHW)."""

    def __init__(self, image_shape=(32, 32, 3), latent_dim=3, width=64, stages=3, blocks=1, hidden=256,
                 mlp_layers=1, norm="layer", upsample="pixel_shuffle", head="conv", activation="gelu",
                 encoder_heads=1, replay=True):
        super().__init__()
        self.latent_dim, self.heads, self.replay = latent_dim, encoder_heads, replay
        act = ACTIVATIONS[activation]
        self.act = act()
        h, w, c = image_shape
        self.shapes = _stage_shapes(h, w, stages)
        enc, cin = [], c
        for i in range(stages):
            cout = width * 2 ** i
            enc += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), act()]
            enc += [ResBlock(cout, norm, activation) for _ in range(blocks)]
            cin = cout
        h0, w0 = self.shapes[-1]
        self.c0 = width * 2 ** (stages - 1)
        mlp, d = [], h0 * w0 * self.c0
        for _ in range(mlp_layers):
            mlp += [nn.Linear(d, hidden), act()]
            d = hidden
        self.encoder = nn.Sequential(*enc, nn.Flatten(), *mlp, nn.Linear(d, latent_dim * encoder_heads))
        mlp, d = [], latent_dim
        for _ in range(mlp_layers):
            mlp += [nn.Linear(d, hidden), act()]
            d = hidden
        self.dec_mlp = nn.Sequential(*mlp, nn.Linear(d, h0 * w0 * self.c0), act())
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        cin = self.c0
        for i in reversed(range(stages)):
            self.blocks.append(nn.Sequential(*[ResBlock(cin, norm, activation) for _ in range(blocks)]))
            cout = c if i == 0 and head == "upsample" else width * 2 ** max(i - 1, 0)
            self.ups.append(Upsample(cin, cout, upsample))
            cin = cout
        self.head = head
        self.out = nn.Conv2d(cin, c, 3, padding=1) if head == "conv" else nn.Identity()

    def forward(self, x):
        """The drawing of x's code; with encoder_heads K, of the one of its K proposals drawn nearest x, chosen
        without gradient over K decoder passes that record each layer's output; the chosen code's drawing replays
        its rows, as jaxae does: K decoder passes forward (a transposed conv's K + 1) and one backward. replay
        False: the chosen code is drawn again, as before the thirty-seventh session."""
        b = x.shape[0]
        z = self.encoder((x - 0.5) * 2.0).reshape(b, self.heads, self.latent_dim)
        if self.heads > 1:
            tape = _Tape() if self.replay else None
            with torch.no_grad():
                y = self.decode(z.reshape(b * self.heads, self.latent_dim), tape)
                best = (y.reshape(b, self.heads, *x.shape[1:]) - x[:, None]).square().flatten(2).mean(2).argmin(1)
            rows = torch.arange(b, device=x.device)
            if tape is None:
                return self.decode(z[rows, best])
            return self.decode(z[rows, best], _Tape([o.reshape(b, self.heads, *o.shape[1:])[rows, best]
                                                     for o in tape.outputs]))
        return self.decode(z[:, 0])

    def decode(self, z, tape=None):
        layer = tape or _call
        h0, w0 = self.shapes[-1]
        y = z
        for m in self.dec_mlp:
            y = layer(m, y) if isinstance(m, nn.Linear) else m(y)
        y = y.reshape(z.shape[0], self.c0, h0, w0)
        for j, (blocks, up) in enumerate(zip(self.blocks, self.ups)):
            th, tw = self.shapes[len(self.shapes) - 2 - j]
            for block in blocks:
                y = block(y, layer)
            y = up(y, layer)[:, :, :th, :tw]
            if j < len(self.ups) - 1 or self.head == "conv":
                y = self.act(y)
        return torch.sigmoid(layer(self.out, y) if self.head == "conv" else y)


def time_training(image_shape=(32, 32, 3), latent_dim=3, width=64, stages=3, blocks=1, hidden=256, mlp_layers=1,
                  norm="layer", upsample="pixel_shuffle", head="conv", batch_size=256, steps=20, repeats=3,
                  compile=False, threads: int | None = None, device: str | None = None, bf16: bool = False,
                  n_data=50000,
                  learning_rate=2e-3, weight_decay=1e-4, grad_clip=1.0, seed=0, log=None, activation="gelu",
                  encoder_heads=1, replay=True) -> dict:
    """Steady-state training img/s of the twin: a warm-up, then `repeats` timings of `steps` steps each.
    `log(message)`, when given, hears of the warm-up and of each timing as it ends."""
    log = log or (lambda message: None)
    if threads:
        torch.set_num_threads(threads)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        # XLA:CPU runs jaxae's programs with denormals flushed to zero; PyTorch does not by default, and the
        # backward pass of (erf) GELU then produced denormals that slowed its steps 2-5x, more as training
        # went on (batch 256, 2 cores: 32-111 img/s against 169-179 flushed; docs/performance.md, seventh
        # session). The same floating-point mode on both sides.
        torch.set_flush_denormal(True)
    torch.manual_seed(seed)
    model = Autoencoder(image_shape, latent_dim, width, stages, blocks, hidden, mlp_layers, norm, upsample, head,
                        activation, encoder_heads, replay).to(device)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    h, w, c = image_shape
    data = torch.randint(0, 256, (n_data, c, h, w), dtype=torch.uint8, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)

    def step(idx):
        x = data[idx].float().div_(255.0).contiguous(memory_format=torch.channels_last)
        flip = torch.rand(x.shape[0], 1, 1, 1, device=device, generator=gen) < 0.5
        x = torch.where(flip, x.flip(3), x)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            loss = F.mse_loss(model(x).float(), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        return loss.detach()

    fn = step
    if compile:
        # static shapes: a second batch size in the same process would otherwise be recompiled as a
        # dynamic-shape graph (dynamo's automatic_dynamic_shapes), slower than a graph for that batch
        fn = torch.compile(step, dynamic=False)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def batches(n):
        return [torch.randint(0, n_data, (batch_size,), device=device, generator=gen) for _ in range(n)]

    t0 = time.perf_counter()
    for idx in batches(3):  # warm-up (and compile)
        loss = fn(idx)
    float(loss)
    sync()
    warmup_s = time.perf_counter() - t0
    log(f"warm-up{' and compile' if compile else ''} {warmup_s:.1f} s")
    times = []
    for _ in range(repeats):
        idxs = batches(steps)
        sync()
        t = time.perf_counter()
        for idx in idxs:
            loss = fn(idx)
        sync()
        times.append(time.perf_counter() - t)
        log(f"timing {len(times)}/{repeats}: {steps * batch_size / times[-1]:,.0f} img/s")
        if not torch.isfinite(loss):
            raise RuntimeError(f"the torch twin's loss became {float(loss)}")
    rates = [steps * batch_size / t for t in times]
    return {"img_s_best": max(rates), "img_s_median": statistics.median(rates), "warmup_s": warmup_s,
            "params": sum(p.numel() for p in model.parameters()), "device": device, "loss": float(loss)}
