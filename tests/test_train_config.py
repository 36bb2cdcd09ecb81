"""Training configuration: shipped configs load, overrides are typed, bad keys and values name themselves."""
from __future__ import annotations

from pathlib import Path

import pytest

from ssfdan_ext.train import ConfigError, TrainConfig, load_config
from ssfdan_ext.train.cli import main
from ssfdan_ext.train.config import parse_override, pretrained_warning

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_synthetic_yaml_is_the_embedded_default():
    cfg = load_config(CONFIGS / "synthetic.yaml")
    assert load_config() == cfg
    assert cfg.source == cfg.target == "synthetic" and cfg.model == "small" and cfg.adaptation == "ssd"


def test_schema_defaults_are_the_paper_setting():
    cfg = TrainConfig()
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.power) == (2.5e-4, 0.9, 1e-4, 0.9)
    assert (cfg.lr_d, cfg.betas_d, cfg.delta, cfg.rho_upper) == (1e-4, [0.9, 0.99], 0.001, 0.8)
    assert cfg.disc_channels == [1024, 512, 256, 128] and cfg.disc_strides == [1, 2, 2, 2, 2]
    assert cfg.disc_backend == "auto" and cfg.progressive and cfg.car and cfg.source_masks == "prediction"


@pytest.mark.parametrize("name", ["gta5_cityscapes_deeplabv2", "gta5_cityscapes_fcn8s", "synthia_cityscapes_16",
                                  "synthia_cityscapes_13", "cityscapes_crosscity_rome", "cityscapes_crosscity_rio",
                                  "cityscapes_crosscity_tokyo", "cityscapes_crosscity_taipei"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.adaptation == "ssd" and cfg.lr == 2.5e-4 and cfg.lr_d == 1e-4 and cfg.betas_d == [0.9, 0.99]
    assert cfg.momentum == 0.9 and cfg.weight_decay == 1e-4 and cfg.power == 0.9
    if "crosscity" in name:
        assert cfg.delta == 0.0005 and cfg.num_classes == 13 and cfg.target == "crosscity"
        assert cfg.city.lower() == name.rsplit("_", 1)[1]
    else:
        assert cfg.delta == 0.001 and cfg.target == "cityscapes"
    assert cfg.model == ("fcn8s_vgg16" if "fcn8s" in name else "deeplabv2_resnet101")


def test_overrides_are_typed():
    cfg = load_config(None, ["iterations=7", "lr=1e-3", "progressive=false", "source_size=[32, 48]",
                             "adaptation=soft+global", "pretrained=null", "delta=0", "model_kwargs={width: 4}"])
    assert cfg.iterations == 7 and cfg.lr == 1e-3 and cfg.progressive is False and cfg.source_size == [32, 48]
    assert cfg.adaptation == "soft+global" and cfg.pretrained is None and cfg.delta == 0.0
    assert cfg.model_kwargs == {"width": 4}
    assert parse_override("name=a=b") == ("name", "a=b")


@pytest.mark.parametrize("override, match", [
    ("iteratons=5", "unknown config key 'iteratons'"),
    ("adaptation=fancy", "adaptation must be one of none, global, soft, soft\\+global, ssd, ssd\\+global"),
    ("iterations=many", "iterations must be an integer"),
    ("iterations=2.5", "iterations must be an integer"),
    ("iterations=0", "iterations must be at least 1"),
    ("progressive=maybe", "progressive must be true or false"),
    ("lr=fast", "lr must be a number"),
    ("lr=-1", "lr must be positive"),
    ("amp=fp8", "amp must be one of off, bf16, fp16"),
    ("device=tpu", "device must be one of"),
    ("source_masks=labels", "source_masks must be one of prediction, ground_truth"),
    ("source_size=[32]", "source_size must be \\[H, W\\]"),
    ("disc_strides=[2, 2, 2, 2, 2]", "disc_strides"),
    ("model=resnet", "model must be one of"),
    ("rho_upper=1.5", "rho_upper must be in"),
    ("car", "must look like key=value"),
])
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_bad_config_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("iterations: 10\nbatchsize: 2\n")
    with pytest.raises(ConfigError, match="unknown config key 'batchsize'.*bad.yaml"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")


def test_cli_reports_config_errors(capsys):
    assert main(["--config", str(CONFIGS / "synthetic.yaml"), "batch_size=-2"]) == 2
    assert "batch_size must be at least 1" in capsys.readouterr().err
    assert main(["--print-config", "iterations=3"]) == 0
    assert "iterations: 3" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_pretrained_warning_names_the_key(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    note = pretrained_warning(cfg)
    if cfg.model == "small":
        assert note is None
    else:
        assert cfg.pretrained is None and "pretrained" in note and cfg.model in note
        assert pretrained_warning(load_config(CONFIGS / f"{name}.yaml", ["pretrained=/weights/x.pth"])) is None
