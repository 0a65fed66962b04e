import json

import pytest

from peftbench.config import EvalConfig, RunConfig
from peftbench.data.protocols import get_protocol
from peftbench.errors import UserError
from peftbench.runs.records import load_run_config


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"peft_type": "adapterx"}, "unknown --peft_type 'adapterx'"),
        ({"peft_type": "hira", "r_ab": 0}, "--r_ab must be a positive integer"),
        ({"peft_type": "lora", "r_ab": -4}, "--r_ab must be a positive integer"),
        ({"load_bit": 8}, "--load_bit must be 16 or 32"),
        ({"eval_strategy": "sometimes"}, "--eval_strategy must be one of"),
        ({"batch": 0}, "--batch must be positive"),
        ({"peft_type": "lora", "target_modules": " , "}, "--target_modules is empty"),
    ],
)
def test_bad_run_settings_name_the_flag(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        RunConfig(**kwargs)


def test_a_method_flag_the_method_is_not_built_from_is_an_error() -> None:
    with pytest.raises(UserError, match=r"--r_ab does not apply to ia3 \(its method flags: --target_modules\)"):
        RunConfig(peft_type="ia3", r_ab=16)
    with pytest.raises(UserError, match="--r_ab, --target_modules does not apply to fft"):
        RunConfig(peft_type="fft", r_ab=16, target_modules="q_proj")
    with pytest.raises(UserError, match="--virtual_tokens does not apply to lora"):
        RunConfig(peft_type="lora", virtual_tokens=8)
    fft = RunConfig(peft_type="fft")
    assert (fft.r_ab, fft.target_modules, fft.lora_alpha) == (None, None, None)


def test_a_record_of_an_older_version_with_every_flag_still_loads() -> None:
    saved = {"peft_type": "fft", "r_ab": 16, "target_modules": "q_proj,v_proj", "lora_dropout": 0.05, "gone": 1}
    assert RunConfig.from_record(saved).r_ab is None


def test_method_defaults_come_before_the_protocol() -> None:
    assert RunConfig(peft_type="vera").r_ab == 256  # VeRA's own, not the hira protocol's 16
    assert RunConfig(peft_type="lora").r_ab == 16
    assert (RunConfig(peft_type="lora").lora_alpha, RunConfig(peft_type="pissa").lora_alpha) == (32.0, 16.0)
    assert RunConfig(peft_type="vera", r_ab=64).r_ab == 64
    assert (RunConfig(peft_type="prefix").virtual_tokens, RunConfig(peft_type="prompt").virtual_tokens) == (8, 20)
    with pytest.raises(UserError, match="--virtual_tokens must be positive"):
        RunConfig(peft_type="prefix", virtual_tokens=0)


def test_defaults_follow_the_specification() -> None:
    config = RunConfig(peft_type="LoRA", r_ab=64)
    assert config.peft_type == "lora"
    assert config.model_name == "EleutherAI/gpt-neo-1.3B"
    assert config.dataset == "common_170k"
    assert config.lora_alpha == 128.0
    assert config.target_module_list == ["q_proj", "v_proj"]
    assert config.max_length == 256 and config.val_set_size == 120 and not config.train_on_inputs


def test_run_folder_name_matches_the_specification_layout() -> None:
    config = RunConfig(peft_type="hira", model_name="EleutherAI/gpt-neo-1.3B", lr=5e-5, seed=36)
    assert config.run_folder_name("20261129-101500") == "gpt-neo-1.3B-common_170k-hira-lr=5e-05-seed=36-20261129-101500"


def test_eval_config_needs_exactly_one_model_source() -> None:
    with pytest.raises(UserError, match="exactly one of --ckpt"):
        EvalConfig()
    with pytest.raises(UserError, match="needs --output_dir"):
        EvalConfig(model_name="smollm2-135m")
    assert EvalConfig(ckpt="x").with_decoding(get_protocol("hira")).beam_size == 4
    assert EvalConfig(ckpt="x", max_new_tokens=5).with_decoding(get_protocol("llm-adapters")).max_new_tokens == 5
    assert EvalConfig(ckpt="x").with_decoding(get_protocol("hira", "math")).max_new_tokens == 200
    assert EvalConfig(ckpt="x").with_decoding(get_protocol("hira", "dialogue")).max_new_tokens == 32


def test_run_config_round_trips_through_output_jsonl(tmp_path) -> None:
    config = RunConfig(peft_type="lora", r_ab=8, lr=3e-4, data_dir="d")
    (tmp_path / "checkpoint-5").mkdir()
    record = {"config": {**config.__dict__, "field_from_a_newer_version": 1}}
    (tmp_path / "output.jsonl").write_text(json.dumps(record) + "\n")
    assert load_run_config(tmp_path / "checkpoint-5") == config


def test_checkpoint_without_run_record_is_refused(tmp_path) -> None:
    with pytest.raises(UserError, match="no output.jsonl"):
        load_run_config(tmp_path)
