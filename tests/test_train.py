"""The train step: pmap over 2 CPU devices equals one device; the loop in-process on 2 devices."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from conftest import REPO, tiny_config, tiny_dataset
from jaxae import train
from jaxae.config import UsageError


def assert_same_state(one, two, atol: float = 1e-6) -> None:
    """Two train states agree: the parameters to rtol 1e-5 and `atol`, the optimiser state (Adam's moments: the
    gradients) to rtol 1e-4 and atol 1e-7."""
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=atol)
    for a, b in zip(jax.tree.leaves(one.opt_state), jax.tree.leaves(two.opt_state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    # Noise and flips on: prepare_batch's per-example keys must make them independent of the device split.
    # The settings of test_train_and_evaluate_on_two_devices's run (4 epochs, learning rate 1e-2): its
    # pmapped step is then the very one compiled here, and comes from the persistent compilation cache.
    cfg = tiny_config(tmp_path_factory.mktemp("train"), noise=0.2, flip=True, warmup_epochs=0.0, epochs=4,
                      learning_rate=1e-2)
    ds = tiny_dataset(n_train=32, n_test=16)
    spe = train.steps_per_epoch(32, cfg.batch_size)
    state = train.create_train_state(cfg, ds.image_shape, cfg.epochs * spe, spe)
    return cfg, ds, spe, state


def test_prepare_batch_clean_target_and_corrupted_input(setup):
    cfg, ds, _, _ = setup
    batch = jnp.asarray(ds.train_images[:8])
    inputs, targets = jax.jit(functools.partial(train.prepare_batch, cfg=cfg, axis_name=None))(
        jax.random.PRNGKey(3), batch)
    x = np.asarray(batch, np.float32) / 255.0
    flipped = np.asarray(targets)
    # each target is the clean image, mirrored or not
    same = np.isclose(flipped, x, atol=1e-6).all(axis=(1, 2, 3))
    mirrored = np.isclose(flipped, x[:, :, ::-1], atol=1e-6).all(axis=(1, 2, 3))
    assert (same | mirrored).all() and same.any() and mirrored.any()
    # each input corrupted at its own strength, uniform in [0, 0.2) (--noise-levels uniform, the default)
    per_example = (np.asarray(inputs) - flipped).std(axis=(1, 2, 3))
    assert per_example.max() < 0.2 and per_example.max() - per_example.min() > 0.05
    assert float(inputs.min()) >= 0 and float(inputs.max()) <= 1


def test_random_shift_translates_each_image_within_n_and_reflects_the_border():
    n, (b, h, w, c) = 2, (64, 5, 6, 2)
    x = jnp.arange(b * h * w * c, dtype=jnp.float32).reshape(b, h, w, c)  # every pixel distinct
    keys = jax.random.split(jax.random.PRNGKey(0), b)
    out = np.asarray(jax.jit(train.random_shift, static_argnums=2)(keys, x, n))
    padded = np.pad(np.asarray(x), ((0, 0), (n, n), (n, n), (0, 0)), mode="reflect")
    seen = set()
    for i in range(b):
        found = [(dy, dx) for dy in range(2 * n + 1) for dx in range(2 * n + 1)
                 if np.array_equal(out[i], padded[i, dy:dy + h, dx:dx + w])]
        assert len(found) == 1, i  # a crop of its own reflected image, at one offset within [-n, n]
        seen.add(found[0])
    assert len(seen) > 15  # of the 25 offsets: each image draws its own


def test_prepare_batch_shift_is_the_same_on_two_devices_and_leaves_other_runs_alone(setup):
    cfg, ds, _, _ = setup
    batch = jnp.asarray(ds.train_images[:8])
    key = jax.random.PRNGKey(3)
    plain = jax.jit(functools.partial(train.prepare_batch, cfg=cfg, axis_name=None))(key, batch)
    shifted_cfg = cfg.replace(shift=2)
    one = jax.jit(functools.partial(train.prepare_batch, cfg=shifted_cfg, axis_name=None))(key, batch)
    two = jax.pmap(functools.partial(train.prepare_batch, cfg=shifted_cfg, axis_name=train.AXIS), axis_name=train.AXIS,
                   in_axes=(None, 0))(key, batch.reshape(2, 4, *batch.shape[1:]))
    for a, b in zip(one, two):  # example i gets its offsets from its global key, whatever the device split
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b).reshape(a.shape))
    # each target is its unshifted twin (same flip) translated by at most 2 pixels; the shift's keys are folded
    # from the flip keys, so a run without --shift keeps the noise and flips it had before the option existed
    padded = np.pad(np.asarray(plain[1]), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    offsets = [[(dy, dx) for dy in range(5) for dx in range(5)
                if np.allclose(np.asarray(one[1])[i], padded[i, dy:dy + 16, dx:dx + 16])] for i in range(8)]
    assert all(len(o) == 1 for o in offsets) and sum(o != [(2, 2)] for o in offsets) >= 5


# init_params in a process as a user's: no XLA_FLAGS (the suite's set level 0 and the older CPU emitters). It
# must ask for level 1 and get the very parameters of XLA's default level 3; level 0 gives them 1 ulp off here.
INIT_PROBE = r"""
import jax, jax.numpy as jnp, numpy as np
from jaxae import train
from jaxae.config import PRESETS, Config
options = []
jit = jax.jit
jax.jit = lambda f, **kw: options.append(kw.get("compiler_options")) or jit(f, **kw)
cfg = Config(**{**PRESETS["tiny"], "preset": "tiny", "stages": 1, "mlp_layers": 1})  # few arrays: a short compile
model = train.model_from_config(cfg, (16, 16, 3))
key = jax.random.PRNGKey(7)
fast = train.init_params(model, key, (16, 16, 3))
ref = jit(model.init, compiler_options={"xla_backend_optimization_level": 3})(key, jnp.zeros((1, 16, 16, 3)))
ref = ref["params"]
same = jax.tree.structure(fast) == jax.tree.structure(ref) and all(
    np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(ref)))
# A resuming train.py and evaluate.py trace create_train_state under eval_shape: init_params runs inside that
# trace, where a jit may not carry compiler options (both failed so on the twelfth session's main).
restore = train.train_state_to_restore(cfg, (16, 16, 3), 10, 5)
traced = jax.eval_shape(lambda: train.init_params(model, key, (16, 16, 3)))  # a key from outside the trace
shapes = jax.tree.map(lambda a, b: a.shape == b.shape and a.dtype == b.dtype, restore.params, fast)
print(options, same, all(jax.tree.leaves(shapes)), jax.tree.structure(traced) == jax.tree.structure(fast))
"""


def test_init_params_compiles_at_level_1_to_the_very_parameters_of_xlas_default_level_and_traces_for_a_restore():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", INIT_PROBE], capture_output=True, text=True, cwd=REPO,
                         env={**env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[{'xla_backend_optimization_level':", "1},", "None,", "None]", "True", "True",
                                  "True"], out.stdout


def test_pmap_on_two_devices_equals_one_device(setup):
    cfg, ds, spe, state = setup
    assert jax.device_count() == 2
    n_steps = 3
    perm = train.epoch_permutation(cfg.seed, 0, ds.train_images.shape[0], spe, cfg.batch_size)
    images = jnp.asarray(ds.train_images)

    # One device: the plain jitted step on the whole global batch.
    step = jax.jit(functools.partial(train.train_step, cfg=cfg, axis_name=None))
    one = state
    one_losses = []
    for i in range(n_steps):
        one, m = step(one, images[perm[i]], jax.random.fold_in(one.key, one.step))
        one_losses.append(float(m["loss"]))

    # Two devices: each gets its half of every global batch; gradients are pmean-ed. The dataset and the
    # epoch's order are placed on the devices as train_and_evaluate places them. (A copy of the state: the
    # pmapped call donates its input state.)
    p_step = train.make_p_train_steps(cfg, 1, spe)
    local_perm = train.local_permutation(perm, 2)
    assert local_perm.shape == (2, spe, cfg.batch_size // 2)
    mesh = Mesh(np.array(jax.local_devices()), (train.AXIS,))
    dataset = train.put_dataset(ds.train_images, mesh)
    assert dataset.shape == (2, *ds.train_images.shape)
    assert [s.data.shape[0] for s in dataset.addressable_shards] == [1, 1]  # a whole copy on each device
    perm_dev = train.device_epoch_order(cfg.seed, 0, ds.train_images.shape[0], spe, cfg.batch_size, mesh)
    np.testing.assert_array_equal(np.asarray(perm_dev), local_perm)
    two, two_losses = jax.tree.map(jnp.copy, state), []
    for i in range(n_steps):
        two, m = p_step(two, dataset, perm_dev)
        two_losses.append(float(np.asarray(m["loss"]).reshape(-1)[0]))

    assert int(two.step) == int(one.step) == n_steps
    np.testing.assert_allclose(two_losses, one_losses, rtol=1e-5)
    # The steps really moved the parameters (by far more than the tolerance below).
    assert max(np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in
               zip(jax.tree.leaves(one.params), jax.tree.leaves(state.params))) > 1e-3
    assert_same_state(one, two)


def test_pass_steps_on_two_devices_make_the_plain_steps_and_compile_once(setup):
    """On CPU a step of more passes than PASSES_IN_FLIGHT runs as separate programs (train._PassSteps): the passes
    two at a time, each gathering and preparing its own microbatches, then the update. 5 passes of 1 example per
    device (groups of 2, 2 and 1), 2 steps per call, noise and flips on: the same losses and parameters as the
    plain jitted step on the whole batch in one pass, and every program compiled at the first call only."""
    cfg, ds, _, state = setup
    cfg = cfg.replace(batch_size=10, microbatch=1)
    spe = train.steps_per_epoch(ds.train_images.shape[0], cfg.batch_size)
    perm = train.epoch_permutation(cfg.seed, 0, ds.train_images.shape[0], spe, cfg.batch_size)
    images = jnp.asarray(ds.train_images)
    step = jax.jit(functools.partial(train.train_step, cfg=cfg.replace(microbatch=0), axis_name=None))
    one, one_losses = state, []
    for i in range(4):
        one, m = step(one, images[perm[i % spe]], jax.random.fold_in(one.key, one.step))
        one_losses.append(float(m["loss"]))

    p_steps = train.make_p_train_steps(cfg, 2, spe)
    assert isinstance(p_steps, train._PassSteps) and p_steps.groups == [(0, 2), (2, 2), (4, 1)]
    mesh = Mesh(np.array(jax.local_devices()), (train.AXIS,))
    dataset = train.put_dataset(ds.train_images, mesh)
    perm_dev = train.device_epoch_order(cfg.seed, 0, ds.train_images.shape[0], spe, cfg.batch_size, mesh)
    lowerings = []

    def listen(name, secs, **kw):
        if name.endswith("jaxpr_to_mlir_module_duration"):
            lowerings.append(name)

    two, two_losses, counts = train.place_state(jax.tree.map(jnp.copy, state), mesh), [], []
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        for _ in range(2):
            lowerings.clear()
            two, m = p_steps(two, dataset, perm_dev)
            two_losses += np.asarray(m["loss"]).tolist()
            counts.append(len(lowerings))
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert counts == [5, 0]  # zero sums, 2 passes, 1 pass, the update, the losses' concatenation; then none
    assert int(two.step) == int(one.step) == 4
    np.testing.assert_allclose(two_losses, one_losses, rtol=1e-5)
    assert max(np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in
               zip(jax.tree.leaves(one.params), jax.tree.leaves(state.params))) > 1e-3
    # atol 5e-6: Adam divides by the root of the second moment, so an element whose gradients are near 0 carries a
    # summation-order difference of the passes into its update (one of 256 weights: 2.0e-6 after 4 steps)
    assert_same_state(one, two, atol=5e-6)
    # two passes at a time or fewer: the plain path (one program); one device of 5 passes, this one
    assert not isinstance(train.make_p_train_steps(cfg.replace(batch_size=4), 1, spe), train._PassSteps)


def test_a_placed_state_compiles_the_pmapped_step_once(setup):
    """train.place_state puts a fresh state where the pmapped step returns it, so its later calls reuse the
    first call's program. A fresh state as create_train_state makes it (on one device, the step a Python int)
    has another signature than the state the step returns: the second call compiled the step again."""
    cfg, ds, spe, state = setup
    mesh = Mesh(np.array(jax.local_devices()), (train.AXIS,))
    dataset = train.put_dataset(ds.train_images, mesh)
    perm = train.device_epoch_order(cfg.seed, 0, ds.train_images.shape[0], spe, cfg.batch_size, mesh)
    lowerings = []  # counted at lowering, which a hit in the persistent compilation cache does not skip

    def listen(name, secs, **kw):
        if name.endswith("jaxpr_to_mlir_module_duration"):
            lowerings.append(name)

    counts = {}
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        for placed in (False, True):
            s = jax.tree.map(jnp.copy, state)  # the step donates its input state
            s = train.place_state(s, mesh) if placed else s
            p_step = train.make_p_train_steps(cfg, 1, spe)
            lowerings.clear()
            for _ in range(3):
                s, m = p_step(s, dataset, perm)
            jax.block_until_ready(m)
            counts[placed] = len(lowerings)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert counts[True] == 1
    assert counts[False] >= 1  # the count sees the compiles (two, with jax 0.10.2)


def test_microbatches_give_the_same_steps_as_one_pass(setup):
    """A step split into microbatches (the CPU default above 64 examples a device) makes the same update as
    one pass over the batch: the same noise and flips, the mean of equal parts' mean losses and gradients."""
    cfg, ds, spe, state = setup
    perm = train.epoch_permutation(cfg.seed, 0, ds.train_images.shape[0], spe, cfg.batch_size)
    images = jnp.asarray(ds.train_images)
    runs = {}
    for micro in (cfg.batch_size, 2):
        c = cfg.replace(microbatch=micro)
        assert train.microbatch_size(c, cfg.batch_size) == micro
        step = jax.jit(functools.partial(train.train_step, cfg=c, axis_name=None))
        s, losses = state, []
        for i in range(3):
            s, m = step(s, images[perm[i]], jax.random.fold_in(s.key, s.step))
            losses.append(float(m["loss"]))
        runs[micro] = s, losses
    (one, one_losses), (four, four_losses) = runs[cfg.batch_size], runs[2]
    np.testing.assert_allclose(four_losses, one_losses, rtol=1e-5)
    assert max(np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in
               zip(jax.tree.leaves(one.params), jax.tree.leaves(state.params))) > 1e-3
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_microbatch_passes_run_two_at_a_time(setup):
    """A step of 8 microbatch passes needs the temporary memory of about two passes (train.PASSES_IN_FLIGHT),
    not of the whole batch: left to itself XLA interleaved the passes op by op and kept all their activations
    live at once (the default model's CPU step: 1,025 MB at 4 passes of 64, 605 MB two at a time)."""
    cfg, _, _, state = setup
    batch = jnp.zeros((64, *setup[1].image_shape), jnp.uint8)

    def temp_bytes(micro):
        step = jax.jit(functools.partial(train.train_step, cfg=cfg.replace(microbatch=micro), axis_name=None))
        return step.lower(state, batch, jax.random.PRNGKey(0)).compile().memory_analysis().temp_size_in_bytes

    assert train.PASSES_IN_FLIGHT == 2
    one_pass, eight_passes = temp_bytes(64), temp_bytes(8)
    assert eight_passes < 0.5 * one_pass, (eight_passes, one_pass)


def test_the_temporary_memory_of_a_step_does_not_grow_with_its_passes():
    """8 passes need about the memory of 4: each pass waits for the gradients summed two passes before it. When
    it waited on one element of them, XLA moved the slice ahead of the sums, put every sum off to the step's end and
    kept each pass's gradients until then: the default model's CPU step at batch 1024 (16 passes of 64) held 918 MB
    of temporaries against 524 MB at batch 256; waiting on the sums' maxima, 483 MB at both (twentieth session)."""
    cfg = tiny_config("unused", width=8, stages=2, blocks=0, hidden=256, mlp_layers=2, microbatch=2)
    state = train.create_train_state(cfg, (16, 16, 3), 100, 10)

    def temp_bytes(batch_size):
        step = jax.jit(functools.partial(train.train_step, cfg=cfg.replace(batch_size=batch_size), axis_name=None))
        batch = jnp.zeros((batch_size, 16, 16, 3), jnp.uint8)
        return step.lower(state, batch, jax.random.PRNGKey(0)).compile().memory_analysis().temp_size_in_bytes

    # 4 and 8 passes: 2.5 and 6.9 MB with one element of each sum (thirty-second session), 1.4 and 1.4 MB now.
    # 16 passes (15.2 MB before, 1.5 now) took 14 s of the suite to compile, against 5 s for 8.
    four, eight = temp_bytes(8), temp_bytes(16)
    assert eight < 1.5 * four, (eight, four)


def test_a_warm_up_longer_than_the_run_warms_up_over_all_but_its_last_step():
    """--warmup-epochs past the run's end warms up to the peak at its last step; 1e308 epochs of warm-up was an
    OverflowError (int of an infinite number of steps)."""
    cfg = tiny_config("unused", learning_rate=1.0)
    for warmup in (1e308, 50.0, 4.5):  # 4.5 epochs of 2 steps: 9 of the run's 10
        lr = train.learning_rate_schedule(cfg.replace(warmup_epochs=warmup), 10, 2)
        assert [round(float(lr(i)), 6) for i in (0, 3, 9)] == [0.0, round(3 / 9, 6), 1.0]
    lr = train.learning_rate_schedule(cfg.replace(warmup_epochs=1.0), 10, 2)
    assert float(lr(2)) == 1.0 and float(lr(10)) == pytest.approx(0.01)
    train.make_optimizer(cfg.replace(warmup_epochs=1e308), 10, 2)


@pytest.mark.parametrize("settings, explicit, words", [
    ({"optimizer": "adam", "weight_decay": 0.5}, {"optimizer", "weight_decay"},
     "--weight-decay does nothing with --optimizer adam"),
    ({"norm": "group", "blocks": 0}, {"norm"}, "--norm group does nothing with --blocks 0"),
    ({"dataset": "mnist"}, {"dataset"}, "--dataset mnist names a tensorflow-datasets dataset, for --data tfds"),
])
def test_flags_that_would_do_nothing_are_refused_where_given(tmp_path, settings, explicit, words):
    """Each was accepted and saved in config.json as if it had shaped the run; the same settings not given on the
    command line (a preset's, a saved run's) pass."""
    cfg = tiny_config(tmp_path, data=str(tmp_path / "images"), **settings)
    with pytest.raises(UsageError, match=words):
        train.check_settings(cfg, explicit)
    train.check_settings(cfg, set())


def test_a_workdir_inside_the_dataset_folder_is_refused(tmp_path, make_image_folder):
    """Its files were read as images of a class of their own: the run's loss_curve.png broke every later load."""
    folder = make_image_folder(tmp_path / "img", n_train=2, n_test=1)
    for workdir in (os.path.join(folder, "train", "run"), folder):
        with pytest.raises(UsageError, match=f"--workdir {workdir} is inside --data {folder}"):
            train.check_settings(tiny_config(tmp_path, data=folder, workdir=workdir), set())
    train.check_settings(tiny_config(tmp_path, data=folder, workdir=str(tmp_path / "img2" / "run")), set())
    train.check_settings(tiny_config(tmp_path, workdir=folder), set())  # --data tfds: no folder of its own


def test_microbatch_size_defaults_and_errors(setup):
    cfg, *_ = setup
    assert jax.default_backend() == "cpu"
    auto = cfg.replace(microbatch=0)
    assert [train.microbatch_size(auto, b) for b in (4, 64, 128, 256, 200, 97, 134)] == [4, 64, 64, 64, 50, 97, 134]
    assert train.microbatch_size(cfg.replace(microbatch=32), 256) == 32
    for bad in (48, 512):
        with pytest.raises(train.UsageError, match=f"--microbatch {bad} does not divide the per-device batch"):
            train.microbatch_size(cfg.replace(microbatch=bad), 256)


def test_cpu_schedule_note_is_for_long_cpu_runs_of_the_presets_models_only():
    from jaxae.config import PRESETS, Config
    cfg = Config()
    per_epoch = train.steps_per_epoch(50_000, cfg.batch_size) * cfg.batch_size  # CIFAR-10: 48 steps of 1024
    note = train.cpu_schedule_note(cfg, (32, 32, 3), cfg.epochs * per_epoch)
    assert note.startswith("note: this run trains the default model on 4,915,200 images: about 0.8-2.3 h on a "
                           "2-core CPU")
    assert "`--preset quick` trains the default model on a CPU's schedule" in note
    assert "about 3.3-9.1 h" in train.cpu_schedule_note(cfg, (64, 64, 3), cfg.epochs * per_epoch)  # 4x the pixels
    assert train.cpu_schedule_note(cfg, (32, 32, 3), 20 * per_epoch) is None  # 20 epochs: under an hour at 600/s
    assert "about 0.4-1.1 h" in train.cpu_schedule_note(cfg, (32, 32, 3), 50 * per_epoch)  # may take over an hour
    # the same model on the quick preset's schedule (20 epochs of batch 128): no note; another model: none either
    quick = Config(**PRESETS["quick"])
    assert train.cpu_schedule_note(quick, (32, 32, 3), quick.epochs * 50_000) is None
    # the old default model (--preset long's): its own, slower rates
    long = train.cpu_schedule_note(Config(**PRESETS["long"]), (32, 32, 3), cfg.epochs * per_epoch)
    assert long.startswith("note: this run trains the model of --preset long (the old default model) on 4,915,200 "
                           "images: about 5.7-17.1 h on a 2-core CPU (80-240 images/s)")
    assert train.cpu_schedule_note(Config(**PRESETS["long"]).replace(width=32), (32, 32, 3), 10 ** 8) is None


def test_train_and_evaluate_on_two_devices(setup, tmp_path, monkeypatch, capsys):
    cfg, ds, spe, _ = setup
    cfg = cfg.replace(workdir=str(tmp_path / "run"))
    assert cfg.epochs == 4 and cfg.learning_rate == 1e-2
    asked = []  # the CPU note's arguments: the images this run has left
    monkeypatch.setattr(train, "cpu_schedule_note", lambda *a: asked.append(a) or "note: the CPU note")
    events = []  # the steps' calls (once each returned) and the give-backs of free memory, in order
    make = train.make_p_train_steps

    def recorded(*a):
        fn = make(*a)
        return lambda *b: (fn(*b), events.append("steps"))[0]

    monkeypatch.setattr(train, "make_p_train_steps", recorded)
    release = train.hostmem.release_free_memory
    monkeypatch.setattr(train.hostmem, "release_free_memory", lambda: events.append("release") or release())
    passes, test_pass = [], train.reconstruction_error  # the test pass's images per pass, at each epoch end
    monkeypatch.setattr(train, "reconstruction_error", lambda *a: passes.append(a[3]) or test_pass(*a))
    result = train.train_and_evaluate(cfg, ds=ds, progress=False)
    assert passes == [train.test_pass_batch()] * 4
    assert jax.default_backend() != "cpu" or passes[0] == 64  # 500 held 250 MB more for the default model there
    assert asked == [(cfg, ds.image_shape, 4 * spe * cfg.batch_size)]
    assert "note: the CPU note" in capsys.readouterr().err
    first = events.index("steps")  # what the first run left free is given back before the second
    assert events[first + 1] == "release" and events.count("steps") == 4 * spe
    assert result["exit"] == 0 and result["step"] == 4 * spe == int(result["state"].step) == result["total"]
    with open(os.path.join(cfg.workdir, "metrics.jsonl")) as fh:
        records = [json.loads(line) for line in fh]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4] and [r["step"] for r in records] == [4, 8, 12, 16]
    assert all(np.isfinite([r["train_loss"], r["test_mse"], r["test_mae"]]).all() for r in records)
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert records[-1]["test_mse"] < records[0]["test_mse"]
    assert result["test_mse"] == records[-1]["test_mse"]
    x, mask = train.pad_to_multiple(ds.test_images, 500)  # the padding is masked out: the same error in one pass
    assert test_pass(result["state"], x, mask, 500)["test_mse"] == pytest.approx(result["test_mse"], rel=1e-5)
    saved = [int(n) for n in os.listdir(os.path.join(cfg.workdir, "checkpoints")) if n.isdigit()]
    assert max(saved) == 4 * spe


def test_several_steps_per_call_train_as_one_step_per_call(tmp_path):
    """--steps-per-call K: K steps in one pmapped call (a lax.scan), the accelerators' default (a whole epoch a call,
    train.default_steps_per_call), make the very run that one step a call makes, on 2 devices, for a model with the
    default model's parts (encoder heads choosing among the sub-pixel cells, the upsample head, ReLU) and noise and
    flips on. 4 steps an epoch in calls of 3 and the epoch's last 1, then --max-steps 6 ends the run inside a call of
    2 of the second epoch: the same metrics at both epoch ends and the same parameters and optimiser state. No GPU ran
    the default model of the thirty-third session; this is the path it takes there."""
    ds = tiny_dataset(n_train=32, n_test=16)
    runs = {}
    for k in (1, 3):
        cfg = tiny_config(tmp_path / f"k{k}", head="upsample", activation="relu", encoder_heads=2, noise=0.2, flip=True,
                          epochs=2, max_steps=6, learning_rate=1e-2, steps_per_call=k)
        result = train.train_and_evaluate(cfg, ds=ds, progress=False)
        with open(os.path.join(cfg.workdir, "metrics.jsonl")) as fh:
            runs[k] = result, [json.loads(line) for line in fh]
    (one, one_records), (three, three_records) = runs[1], runs[3]
    assert three["exit"] == 0 and three["step"] == int(three["state"].step) == 6
    assert [r["step"] for r in three_records] == [r["step"] for r in one_records] == [4, 6]
    for key in ("train_loss", "test_mse", "test_mae"):
        np.testing.assert_allclose([r[key] for r in three_records], [r[key] for r in one_records], rtol=1e-5)
    assert_same_state(one["state"], three["state"], atol=5e-6)  # atol: as for the pass steps above


def test_the_readme_python_example_runs_and_learns(capsys):
    """README's "Use from Python" block, as printed there: it trains, and its shapes are what it says."""
    readme = open(os.path.join(REPO, "README.md")).read()
    section = readme.split("## Use from Python\n", 1)[1].split("\n## ", 1)[0]
    lines = section.split("\n")
    start = next(i for i, l in enumerate(lines) if l.startswith("    "))
    end = next(i for i in range(start, len(lines)) if lines[i] and not lines[i].startswith("    "))
    code = "\n".join(l[4:] for l in lines[start:end])
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["codes"].shape == (64, 3) and scope["recon"].shape == (64, 16, 16, 3)
    before = train.eval_step(train.create_train_state(scope["cfg"], (16, 16, 3), 8, 8), scope["images"])["mse"]
    after = train.eval_step(scope["state"], scope["images"])["mse"]
    assert float(after) < 0.6 * float(before)  # 0.112 -> 0.050 when it was written


def test_steps_refuse_float_images(tmp_path):
    """Floats in [0, 1] were divided by 255 again, silently training towards black."""
    cfg = tiny_config(tmp_path)
    state = train.create_train_state(cfg, (16, 16, 3), 8, 8)
    with pytest.raises(TypeError, match="take uint8 images"):
        train.eval_step(state, jnp.zeros((4, 16, 16, 3)))
    with pytest.raises(TypeError, match="take uint8 images"):
        train.train_step(state, jnp.zeros((4, 16, 16, 3)), jax.random.PRNGKey(0), cfg)


def test_the_python_api_refuses_what_the_flags_would_in_one_clear_line(tmp_path):
    # latent_dim=0 was a ZeroDivisionError in flax's initialisers; N x H x W grayscale "not enough values to unpack"
    cfg = tiny_config(tmp_path)
    with pytest.raises(UsageError, match="--latent-dim must be at least 1"):
        train.create_train_state(cfg.replace(latent_dim=0), (16, 16, 3), 8, 8)
    with pytest.raises(UsageError, match="image_shape \\(16, 16\\) is not \\(height, width, channels\\)"):
        train.create_train_state(cfg, (16, 16), 8, 8)
    # only the model's fields: a model is built for any run's config (evaluate.py of an older run)
    train.create_train_state(cfg.replace(learning_rate=0.0, keep=0), (16, 16, 3), 8, 8)
    state = train.create_train_state(cfg, (16, 16, 1), 8, 8)
    with pytest.raises(ValueError, match="grayscale images need a channel axis"):
        train.eval_step(state, jnp.zeros((4, 16, 16), jnp.uint8))
