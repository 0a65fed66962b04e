"""Training data pipeline: cached tokenization, data prepare and stats."""

from __future__ import annotations

import json

import pytest
from tiny import LLM_ADAPTERS, make_tokenizer

from peftbench.config import RunConfig
from peftbench.data import pipeline
from peftbench.data.tools import prepare, stats_rows


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def test_second_build_loads_the_tokenized_cache(tokenizer, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path))
    calls = []
    original = pipeline.tokenize_batch

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(pipeline, "tokenize_batch", counting)
    config = RunConfig(peft_type="lora", dataset="boolq", data_dir=str(LLM_ADAPTERS), max_train_samples=300)
    first_train, first_validation, _, info = pipeline.build_datasets(config.data_settings(), tokenizer)
    assert calls and len(first_train) == 300 and len(first_validation) == 120
    calls.clear()
    second_train, _, _, second_info = pipeline.build_datasets(config.data_settings(), tokenizer)
    assert not calls, "tokenized again instead of loading the cache"
    assert second_train["input_ids"] == first_train["input_ids"] and second_info == info
    assert {f"{info['tokenization_cache']}-train", f"{info['tokenization_cache']}-validation"} <= {
        p.name for p in (tmp_path / "tokenized").iterdir()
    }
    other = RunConfig(peft_type="lora", dataset="boolq", data_dir=str(LLM_ADAPTERS), max_train_samples=300,
                      train_on_inputs=True)  # fmt: skip
    assert pipeline.tokenization_key("x", other.data_settings(), tokenizer) != pipeline.tokenization_key(
        "x", config.data_settings(), tokenizer
    )


def test_prepare_writes_a_folder_that_works_as_data_dir(tmp_path, data_dir) -> None:
    out = tmp_path / "prepared"
    prepare(out, ["boolq", "csqa"], data_dir)
    assert len(json.loads((out / "boolq" / "test.json").read_text())) == 3270
    assert len(json.loads((out / "boolq" / "train.json").read_text())) == 9427
    csqa = json.loads((out / "commonsense_qa" / "test.json").read_text())
    assert len(csqa) == 1221 and csqa[0]["answer"] == "answer1"
    assert len(json.loads((out / "commonsense_170k.json").read_text())) == 9427 + 2251 + 1119 + 4957  # the stand-in

    from peftbench.data.sources import load_test_examples, load_train_examples

    assert load_test_examples("csqa", str(out)).files == [out / "commonsense_qa" / "test.json"]
    assert load_train_examples("commonsense_mix", str(out)).files == [out / "boolq" / "train.json"]


def test_stats_count_labels_lengths_and_truncation(tokenizer, data_dir) -> None:
    header, *rows = stats_rows(["boolq", "hellaswag"], data_dir, tokenizer, max_length=64)
    assert header[-4:] == [
        "hira: cut at 64",
        "hira: answer lost",
        "llm-adapters: cut at 64",
        "llm-adapters: answer lost",
    ]
    by_split = {(r[0], r[1]): r for r in rows}
    boolq = by_split[("boolq", "test")]
    assert boolq[2] == "3270" and boolq[3] == "0" and "false:38% true:62%" == boolq[4]
    # No training set here: shown with the reason, not left out.
    assert by_split[("hellaswag", "train")][2].startswith("unavailable: no train data for hellaswag")
    hellaswag = by_split[("hellaswag", "test")]
    p50, _, _, longest = (int(x) for x in hellaswag[5].split("/"))
    assert 64 < p50 <= longest and int(hellaswag[6]) > 80  # most HellaSwag examples exceed 64 tokens
    assert hellaswag[7] == "0" and int(hellaswag[9]) > 80  # hira keeps every answer; llm-adapters loses them
