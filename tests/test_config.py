import pytest

from baseline.config import Config, ConfigError, from_dict, load_config, to_dict


def test_defaults_then_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 3\n  batch_size: 32\noptim:\n  lr: 1e-3\n")
    cfg = load_config(f, ["train.epochs=5", "data.img_size=[48,32]", "submit.checkpoints=[runs/a,runs/b]"])
    assert cfg.train.epochs == 5  # override beats file
    assert cfg.train.batch_size == 32  # file beats default
    assert cfg.optim.lr == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as a string; we read a number
    assert cfg.data.img_size == [48, 32]
    assert cfg.submit.checkpoints == ["runs/a", "runs/b"]
    assert cfg.model.name == Config().model.name  # untouched default


@pytest.mark.parametrize("override, key", [
    ("train.epoch=3", "train.epoch"),
    ("nope=1", "nope"),
    ("log.wandb.modee=offline", "log.wandb.modee"),
])
def test_unknown_key_is_rejected_by_name(override, key):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
        load_config(None, [override])


@pytest.mark.parametrize("override, key", [
    ("train.epochs=three", "train.epochs"),
    ("train.epochs=2.5", "train.epochs"),
    ("train.amp=fp8", "train.amp"),
    ("optim.lr=fast", "optim.lr"),
    ("data.img_size=[1,2,3]", "data.img_size"),
    ("train.batch_size=big", "train.batch_size"),
    ("split.fold=7", "split.fold"),
    ("train=3", "train"),
])
def test_wrong_type_is_rejected_by_name(override, key):
    with pytest.raises(ConfigError, match=f"'{key}"):
        load_config(None, [override])


def test_unknown_key_in_yaml_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  nam: resnet18\n")
    with pytest.raises(ConfigError, match="model.nam"):
        load_config(f)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nope.yaml")


def test_roundtrip_through_dict():
    cfg = load_config(None, ["model.pretrained=weights.pth", "train.batch_size=auto"])
    again = from_dict(to_dict(cfg))
    assert again == cfg
    assert again.model.pretrained == "weights.pth" and again.train.batch_size == "auto"


def test_string_keys_keep_the_text_as_written():
    cfg = load_config(None, ["run.name=off", "model.name=yes", "log.wandb.group=1e3", "model.pretrained=false",
                             "train.batch_size=auto", "optim.lr=3e-4"])
    assert cfg.run.name == "off" and cfg.model.name == "yes" and cfg.log.wandb.group == "1e3"
    assert cfg.model.pretrained is False and cfg.train.batch_size == "auto"
    assert cfg.optim.lr == pytest.approx(3e-4)


def test_yaml_files_stack_and_may_dot_their_keys(tmp_path):
    team, exp = tmp_path / "team.yaml", tmp_path / "exp.yaml"
    team.write_text("data.root: /data/mask\ntrain:\n  epochs: 3\n  amp: off\nsplit.folds: 4\n")
    exp.write_text("train.epochs: 7\nmodel: {name: resnet18}\n")
    cfg = load_config([team, exp], ["split.folds=6"])
    assert (cfg.data.root, cfg.train.epochs, cfg.train.amp, cfg.model.name, cfg.split.folds) == (
        "/data/mask", 7, "off", "resnet18", 6)  # later files win, overrides last; YAML's `off` stays the word
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epochz'.*exp.yaml"):
        exp.write_text("train.epochz: 7\n")
        load_config([team, exp])


def test_off_on_the_command_line_is_the_word_and_a_list_stays_a_list():
    cfg = load_config(None, ["train.amp=off", "submit.checkpoints=[runs/a,runs/b]", "model.pretrained=true"])
    assert cfg.train.amp == "off" and cfg.submit.checkpoints == ["runs/a", "runs/b"] and cfg.model.pretrained is True


def test_a_config_reused_for_another_run_resolves_its_machine_keys_again():
    from baseline.config import for_another_run, machine_resets

    ran = load_config(None, ["train.device=cuda", "train.amp=bf16", "train.threads=7", "data.num_workers=6",
                             "data.cache=disk", "train.epochs=3", "data.img_size=[64,48]"])
    again = for_another_run(ran)
    assert (again.train.device, again.train.amp, again.train.threads, again.data.num_workers, again.data.cache) == (
        "auto", "auto", "auto", "auto", "auto")
    assert again.train.epochs == 3 and again.data.img_size == [64, 48]  # what is learned stays
    assert "train.device=auto" in machine_resets() and not any(r.startswith("train.epochs") for r in machine_resets())
