"""Config: flags generated from the dataclass, presets, checks, JSON round trip."""

import argparse
import dataclasses
import json
import os

import pytest

from jaxae import checkpoints
from jaxae.config import OLD_MODEL, PRESETS, Config, UsageError, add_flags, config_path, from_args, load_config


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return from_args(parser.parse_args(list(argv)))


def test_every_field_has_a_flag_with_help():
    parser = argparse.ArgumentParser()
    add_flags(parser)
    dests = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(Config):
        assert f.name in dests, f"no flag for {f.name}"
        assert dests[f.name].help and dests[f.name].option_strings[0] == f"--{f.name.replace('_', '-')}"
    assert set(Config.RUN_FIELDS) <= {f.name for f in dataclasses.fields(Config)}
    assert set(Config.MODEL_FIELDS) <= set(Config.RUN_FIELDS)
    text = " ".join(parser.format_help().split())  # --loss LOSS hid l1 and l2 until a wrong value was given
    for f in dataclasses.fields(Config):
        if f.metadata.get("choices"):
            assert f"--{f.name.replace('_', '-')} {{{','.join(f.metadata['choices'])}}}" in text, f.name


def test_defaults_preset_and_explicit_flags():
    cfg, explicit = parse()
    assert cfg == Config() and explicit == set()
    cfg, explicit = parse("--preset", "tiny", "--width", "12", "--no-flip", "--noise", "0.2")
    assert cfg.width == 12 and cfg.flip is False and cfg.noise == 0.2
    assert cfg.stages == PRESETS["tiny"]["stages"] and cfg.batch_size == PRESETS["tiny"]["batch_size"]
    assert explicit == {"preset", "width", "flip", "noise"}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_parses_to_a_valid_config_of_its_own_values(name):
    cfg, explicit = parse("--preset", name)
    assert explicit == {"preset"} and cfg.preset == name
    assert {k: getattr(cfg, k) for k in PRESETS[name]} == PRESETS[name]


def test_the_default_is_the_schedule_docs_quality_measured():
    """docs/quality.md's rows: the default schedule, 100 epochs, batch 1024, peak rate 2e-3 after a 3-epoch warm-up,
    of the default model since the thirty-third session (the quick preset's: width 16, no residual blocks, the
    sub-pixel output head, ReLU, 4 encoder heads); --preset long is that schedule with the default model before
    (OLD_MODEL: width 64, a residual block per stage, a conv head, GELU, one head; fourteenth and twentieth
    sessions), --preset short OLD_MODEL before the twentieth (30 epochs, batch 256, 1-epoch warm-up).
    Changing a dataclass default must not change what those rows measured silently."""
    cfg, _ = parse()
    assert (cfg.epochs, cfg.batch_size, cfg.learning_rate, cfg.warmup_epochs) == (100, 1024, 2e-3, 3.0)
    model = cfg.model_settings()
    assert model == {**model, "width": 16, "blocks": 0, "head": "upsample", "activation": "relu",
                     "encoder_heads": 4, "hidden": 512, "mlp_layers": 3, "stages": 3, "latent_dim": 3}
    assert parse("--preset", "default")[0] == cfg.replace(preset="default")
    long, _ = parse("--preset", "long")
    assert long == cfg.replace(preset="long", **OLD_MODEL)
    assert (long.width, long.blocks, long.head, long.activation, long.encoder_heads) == (64, 1, "conv", "gelu", 1)
    short, _ = parse("--preset", "short")
    assert (short.epochs, short.batch_size, short.learning_rate, short.warmup_epochs) == (30, 256, 2e-3, 1.0)
    assert short.model_settings() == long.model_settings()
    # the CPU preset: the default model for 20 epochs at a peak rate of 1e-3 (its model since the twenty-ninth
    # session; 30 epochs of one head at 1e-3 from the twenty-seventh, 14 at 2e-3 from the seventh)
    quick, _ = parse("--preset", "quick")
    assert (quick.epochs, quick.batch_size, quick.learning_rate, quick.warmup_epochs) == (20, 128, 1e-3, 1.0)
    assert quick.model_settings() == model


def test_a_config_saved_before_a_setting_existed_reads_as_its_version_trained():
    """A config.json lacks the settings added after the version that wrote it: they read as that version's
    behaviour (BEFORE), not today's defaults. Before the thirty-third session the default model was OLD_MODEL;
    before the twenty-eighth, every example was corrupted at --noise."""
    saved = {k: v for k, v in dataclasses.asdict(Config(**PRESETS["long"])).items()
             if k not in ("head", "activation", "encoder_heads", "noise_levels")}
    old = Config.from_dict(saved)
    assert (old.head, old.activation, old.encoder_heads, old.noise_levels) == ("conv", "gelu", 1, "fixed")
    assert old.model_settings() == Config(**PRESETS["long"]).model_settings()
    assert Config.from_dict(dataclasses.asdict(Config())) == Config()  # a config.json of today's: as it is


@pytest.mark.parametrize("argv,warmup", [
    (["--epochs", "10"], 0.3),  # 3 % of the run, as the default's 3 of 100 epochs
    (["--epochs", "200"], 3.0),  # more epochs than the preset's: its warm-up as it is
    (["--epochs", "10", "--warmup-epochs", "2"], 2.0),  # given: kept
    (["--preset", "quick", "--epochs", "15"], 0.75),  # the quick preset's 1 of 20 epochs
    (["--preset", "tiny", "--epochs", "4"], 1.0),
    (["--warmup-epochs", "5"], 5.0),
])
def test_fewer_epochs_shorten_the_presets_warm_up_in_proportion(argv, warmup):
    cfg, _ = parse(*argv)
    assert cfg.warmup_epochs == pytest.approx(warmup)


@pytest.mark.parametrize("argv,flag", [
    (["--batch-size", "0"], "--batch-size"),
    (["--noise", "-0.1"], "--noise"),
    (["--corruption", "mask", "--noise", "1.5"], "--noise"),
    (["--learning-rate", "0"], "--learning-rate"),
    (["--weight-decay", "-1"], "--weight-decay"),
    (["--max-steps", "-3"], "--max-steps"),
    (["--microbatch", "-1"], "--microbatch"),
    (["--preset", "huge"], "--preset"),
    # NaN passed every comparison: --warmup-epochs nan crashed in make_optimizer, --learning-rate nan trained to a
    # NaN loss, --grad-clip nan turned clipping off; inf crashed or trained the same way
    (["--warmup-epochs", "nan"], "--warmup-epochs must be a finite number"),
    (["--learning-rate", "nan"], "--learning-rate must be a finite number"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite number"),
    (["--grad-clip", "nan"], "--grad-clip must be a finite number"),
    (["--learning-rate", "inf"], "--learning-rate must be a finite number"),
    (["--warmup-epochs", "inf"], "--warmup-epochs must be a finite number"),
    (["--noise", "nan"], "--noise must be a finite number"),
    # numpy's generator took neither (a traceback after the run's folder was made)
    (["--seed", "-1"], "--seed must be a whole number from 0 to 4294967295"),
    (["--seed", str(2 ** 64)], "--seed must be"),
    (["--workdir", ""], "--workdir is empty: give the folder"),  # "--workdir  is not writable (No such file ...)"
    # an array dimension past XLA's: a TypeError from MLIR
    (["--latent-dim", str(10 ** 20)], "--latent-dim must be at most 2,147,483,647"),
    (["--hidden", str(2 ** 31)], "--hidden must be at most"),
])
def test_invalid_values_are_usage_errors_naming_the_flag(argv, flag):
    with pytest.raises(UsageError, match=flag):
        parse(*argv)


def test_unknown_choice_is_rejected_by_argparse():
    with pytest.raises(SystemExit) as e:
        parse("--loss", "l3")
    assert e.value.code == 2


def test_json_round_trip_and_load_config(tmp_path):
    cfg = Config(**PRESETS["tiny"], workdir=str(tmp_path), noise=0.3, loss="l1")
    (tmp_path / "config.json").write_text(cfg.to_json())
    assert config_path(str(tmp_path)) == str(tmp_path / "config.json")
    assert load_config(str(tmp_path)) == cfg
    # keys written by a newer version are ignored, not fatal
    assert Config.from_dict({**dataclasses.asdict(cfg), "future_setting": 1}) == cfg
    with pytest.raises(UsageError, match="elsewhere: no such folder; give the folder a training run wrote"):
        load_config(str(tmp_path / "elsewhere"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(UsageError, match="no config.json"):
        load_config(str(tmp_path / "empty"))


@pytest.mark.parametrize("name, value, words", [
    ("latent_dim", "3", 'latent_dim is "3", not a whole number'),
    ("epochs", 3.5, "epochs is 3.5, not a whole number"),  # trained, as "epoch 4/3.5"
    ("flip", 1, "flip is 1, not true or false"),
    ("noise", "0.2", 'noise is "0.2", not a number'),
    ("learning_rate", 10 ** 400, "learning_rate is a whole number of 401 digits, too large"),  # an OverflowError
])
def test_a_hand_edited_config_json_of_the_wrong_kind_is_one_clear_error(tmp_path, name, value, words):
    """A value of the wrong kind in config.json names the setting (a "3" for latent_dim was a traceback from
    validate's comparisons); a whole number where a number goes is that number."""
    cfg = Config(**PRESETS["tiny"], workdir=str(tmp_path))
    saved = json.loads(cfg.to_json())
    (tmp_path / "config.json").write_text(json.dumps({**saved, name: value}))
    with pytest.raises(UsageError, match=f"config.json cannot be read as a run's config \\(TypeError: {words}\\)"):
        load_config(str(tmp_path))
    (tmp_path / "config.json").write_text("[1, 2]")  # an AttributeError traceback
    with pytest.raises(UsageError, match="TypeError: it holds a JSON list, not an object of settings"):
        load_config(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**saved, "noise": 0, "learning_rate": 1}))
    loaded = load_config(str(tmp_path))
    assert loaded == cfg.replace(learning_rate=1.0) and type(loaded.noise) is float


def test_a_config_saved_before_noise_levels_existed_reads_as_fixed_levels(tmp_path):
    """--noise-levels came in the twenty-eighth session with the default 'uniform'; the runs before it corrupted
    every example at --noise, so a config.json without the field is 'fixed', and such a run goes on as it was."""
    cfg = Config(**PRESETS["tiny"], workdir=str(tmp_path), noise=0.2)
    assert cfg.noise_levels == "uniform"
    saved = json.loads(cfg.to_json())
    del saved["noise_levels"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert load_config(str(tmp_path)) == cfg.replace(noise_levels="fixed")
    # a run killed before its first save starts over with its own settings: still fixed levels
    resolved, resuming = checkpoints.resolve_workdir(Config(workdir=str(tmp_path)), set())
    assert not resuming and resolved.noise_levels == "fixed" and resolved.noise == 0.2
