import pytest

from kinject.config import StageConfig, StrictModel, apply_overrides, load_config, register_config
from kinject.errors import UserError


class Train(StrictModel):
    lr: float = 1e-4
    steps: int = 10


@register_config
class ToyConfig(StageConfig):
    kind: str = "toy_test"
    name: str = "x"
    train: Train = Train()


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_load_and_override(tmp_path):
    p = write(tmp_path, "kind: toy_test\ntrain:\n  lr: 0.5\n")
    cfg = load_config(p, ["train.steps=7", "name=hello"])
    assert isinstance(cfg, ToyConfig)
    assert cfg.train.lr == 0.5 and cfg.train.steps == 7 and cfg.name == "hello"


def test_unknown_key_names_key_file_and_valid_keys(tmp_path):
    p = write(tmp_path, "kind: toy_test\ntrain:\n  lrr: 0.5\n")
    with pytest.raises(UserError) as e:
        load_config(p)
    msg = str(e.value)
    assert "'train.lrr'" in msg and str(p) in msg and "lr, steps" in msg


def test_unknown_override_key(tmp_path):
    p = write(tmp_path, "kind: toy_test\n")
    with pytest.raises(UserError, match="'train.nope'"):
        load_config(p, ["train.nope=1"])


def test_wrong_type(tmp_path):
    p = write(tmp_path, "kind: toy_test\ntrain:\n  steps: many\n")
    with pytest.raises(UserError, match="bad value for config key 'train.steps'"):
        load_config(p)


def test_bad_yaml_and_missing_file(tmp_path):
    p = write(tmp_path, "kind: [unclosed\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(p)
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_expect_pins_class_and_rejects_other_kind(tmp_path):
    assert load_config(None, ["train.lr=2"], expect=ToyConfig).train.lr == 2
    p = write(tmp_path, "kind: something_else\n")
    with pytest.raises(UserError, match="does not fit"):
        load_config(p, expect=ToyConfig)


def test_override_into_value_is_error():
    with pytest.raises(UserError, match="is a value"):
        apply_overrides({"name": "x"}, ["name.sub=1"])
    with pytest.raises(UserError, match="key.sub=value"):
        apply_overrides({}, ["novalue"])


def test_one_training_vocabulary_older_names_still_load(tmp_path):
    """`lr`, `steps`, `per_device_batch_size`, flat `lora_r` are older spellings of the one
    vocabulary (`learning_rate`, `max_steps`, `batch_size`, `lora.r`): they load into the new
    names (a nested one into its section, keeping the section's other defaults); both spellings
    at once is one error line naming both."""
    from kinject.gag.config import PhaseConfig
    from kinject.grip.config import GripSftConfig

    old = PhaseConfig(data="d", memory="m", steps=30, lr=1e-3)
    assert (old.max_steps, old.learning_rate) == (30, 1e-3)
    sft = load_config(write(tmp_path, "kind: grip_sft\nmodel: m\ndata: d\nlr: 0.01\nper_device_batch_size: 4\n"),
                      ["lora_r=8", "scheduler=constant"], expect=GripSftConfig)
    assert (sft.learning_rate, sft.batch_size, sft.lr_scheduler) == (0.01, 4, "constant")
    assert (sft.lora.r, sft.lora.dropout, sft.lora.target_modules) == (8, 0.0, "all-linear")  # GRIP's defaults kept
    assert "lr" not in sft.model_dump() and "lora_r" not in sft.model_dump()
    with pytest.raises(UserError) as e:
        load_config(write(tmp_path, "kind: grip_sft\nmodel: m\ndata: d\nlearning_rate: 0.1\n"), ["lr=0.2"],
                    expect=GripSftConfig)
    assert "'lr' and 'learning_rate' are both given" in str(e.value) and "\n" not in str(e.value)
