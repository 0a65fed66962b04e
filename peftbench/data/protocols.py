"""Protocols: named, complete sets of the choices that move a benchmark number, one entry each.

A protocol fixes the prompt bytes, how training examples are cut and labelled, what the model sees
at evaluation, how the validation set is held out, and the defaults of every setting the
specification leaves unset. ``hira`` is the official HiRA code (hqsiswiliam/hira, commit f75f0cf);
``llm-adapters`` is LLM-Adapters' ``finetune.py`` (AGI-Edgerunners/LLM-Adapters). Every line below
names the official line it follows; where the official behaviour is a defect we keep the correct
behaviour and say so in ``NOT_REPLICATED`` (and in the README).

Any single flag still overrides its protocol's default: a protocol only fills what is left unset.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, asdict, dataclass, field, fields, replace
from typing import Any

from peftbench.errors import UserError

# dataset/format_inputs.py, BOOLQ_TEMPLATE (template_type 4): two spaces after "request.", input field unused.
HIRA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.  "
    "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
# finetune.py, generate_prompt: the bytes as written there, 16 spaces of source indentation included.
_INDENT = " " * 16
LLM_ADAPTERS_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.  "
    f"\n\n{_INDENT}### Instruction:\n{_INDENT}{{instruction}}\n{_INDENT}\n{_INDENT}### Response:\n{_INDENT}"
)
LLM_ADAPTERS_INPUT_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    f"response that appropriately completes the request. \n\n{_INDENT}### Instruction:\n{_INDENT}{{instruction}}\n"
    f"{_INDENT}\n{_INDENT}### Input:\n{_INDENT}{{input}}\n{_INDENT}\n{_INDENT}### Response:\n{_INDENT}"
)

VALIDATION_RULES = ("shuffle-tail", "train-test-split")
DEFAULT_MAX_LENGTH = 256  # --max_length where a protocol leaves it unset (the commonsense variants)


@dataclass(frozen=True)
class Protocol:
    name: str
    summary: str
    template: str  # the prompt up to the response, with {instruction}
    input_template: str | None  # used when an example has an input; None: the input field is not used
    # Training examples. answer_max_tokens set: the prompt alone is cut at --max_length and the answer (cut at
    # this many tokens) is always appended, so it is always trained. None: prompt + answer cut together.
    answer_max_tokens: int | None
    append_eos: bool  # EOS after the answer (when the sequence fits)
    special_tokens: bool  # the tokenizer's own special tokens (add_special_tokens) on the prompt
    # Evaluation: BOS before the prompt; the prompt (BOS included) cut at this many tokens (None: never cut).
    eval_bos: bool
    eval_prompt_max_tokens: int | None
    # Validation: shuffle-tail = random.Random(seed).shuffle, last N (the same for every --seed);
    # train-test-split = datasets' train_test_split(test_size=N, seed). seed None: the run's --seed.
    validation_rule: str
    validation_seed: int | None
    run_defaults: dict[str, Any] = field(default_factory=dict)  # RunConfig fields left unset
    eval_defaults: dict[str, Any] = field(default_factory=dict)  # EvalConfig fields left unset
    sources: dict[str, str] = field(default_factory=dict)  # setting -> the official line it follows
    # Added with the math and dialogue tasks. At these defaults (the commonsense variants) they stay out of
    # settings(), so the commonsense settings, tokenization cache keys and results are those written before.
    task: str = "commonsense"
    scorers: dict[str, str] = field(default_factory=lambda: {"keyword": "keyword"})  # answer kind -> scorer
    generation: dict[str, Any] = field(default_factory=dict)  # further generate() settings (length penalty, ...)

    def scorer(self, dataset: str, answer_kind: str) -> str:
        """The official scorer of a dataset's kind of answer under this protocol, or one line naming those that
        have one (AQuA's letters are LLM-Adapters'; HiRA's rule rounds, so it scores integer answers only)."""
        if answer_kind in self.scorers:
            return self.scorers[answer_kind]
        offered = [p.name for p in TASK_PROTOCOLS.values() if p.task == self.task and answer_kind in p.scorers]
        where = f"--protocol {' or '.join(offered)} scores them" if offered else "no protocol scores them"
        raise UserError(f"{dataset}'s answers ({answer_kind}) have no official scorer under protocol {self.name!r}; "
                        f"{where}")  # fmt: skip

    def settings(self) -> dict[str, Any]:
        """Everything this protocol decides, for output.jsonl and every evaluation record."""
        added = {f.name: f for f in fields(self) if f.name in ("task", "scorers", "generation")}
        return {
            k: v
            for k, v in asdict(self).items()
            if k not in ("summary", "sources") and not (k in added and v == _default(added[k]))
        }


def _default(declared: Field) -> Any:
    return declared.default_factory() if declared.default_factory is not MISSING else declared.default


HIRA = Protocol(
    name="hira",
    summary="the official HiRA code: train_hira.py and dataset/format_inputs.py of hqsiswiliam/hira",
    template=HIRA_TEMPLATE,
    input_template=None,
    answer_max_tokens=16,
    append_eos=False,
    special_tokens=False,
    eval_bos=True,
    eval_prompt_max_tokens=256,
    validation_rule="shuffle-tail",
    validation_seed=58,
    run_defaults={
        "warmup": 10,
        "weight_decay": 0.01,
        "eval_strategy": "epoch",
        "save_total_limit": 1,
        "lr": 1e-5,
        "batch": 32,
        "grad_acc": 1,
        "r_ab": 16,
        "train_on_inputs": False,
    },  # fmt: skip
    eval_defaults={"beam_size": 4, "max_new_tokens": 16},
    sources={
        "template": "dataset/format_inputs.py:112-118 (BOOLQ_TEMPLATE); train_hira.py:229-231 (template_type 4)",
        "input_template": "dataset/dataset_hg.py:69 (input_x = instruction only)",
        "answer_max_tokens": "format_inputs.py:194-197 (prompt: max_length 256, truncation; target: 16 tokens)",
        "train_on_inputs": "format_inputs.py:199-201 (prompt labels = pad -> -100)",
        "append_eos": "format_inputs.py:189-201 (the commonsense branch appends no EOS)",
        "special_tokens": "format_inputs.py:194-195 (add_special_tokens=False)",
        "eval_bos": "format_inputs.py:180-186 (f'{bos_token}{prompt}', truncation at 256)",
        "eval_prompt_max_tokens": "format_inputs.py:183-186; token_length_map (256)",
        "validation_rule": "data_file/llm_adapt/commonsense_170k/do_train_val_test_split.py:3-13 (seed 58, last 120)",
        "warmup": "train_hira.py:31",
        "weight_decay": "train_hira.py:32",
        "eval_strategy": "train_hira.py:50",
        "save_total_limit": "train_hira.py:65",
        "lr": "train_hira.py:34",
        "batch": "train_hira.py:28",
        "grad_acc": "train_hira.py:29",
        "r_ab": "train_hira.py:48",
        "beam_size": "train_hira.py:405-407 (beam 4 unless --beam_size)",
        "max_new_tokens": "format_inputs.py:37-51 (gen_max_new_token_map: 16)",
        "decoding": "train_hira.py:61, 317-323 (--do_sample 'false': deterministic beam search)",
    },  # fmt: skip
)

LLM_ADAPTERS = Protocol(
    name="llm-adapters",
    summary="LLM-Adapters' finetune.py (AGI-Edgerunners/LLM-Adapters), as used for Commonsense-170K",
    template=LLM_ADAPTERS_TEMPLATE,
    input_template=LLM_ADAPTERS_INPUT_TEMPLATE,
    answer_max_tokens=None,
    append_eos=True,
    special_tokens=True,
    eval_bos=False,
    eval_prompt_max_tokens=None,
    validation_rule="train-test-split",
    validation_seed=42,
    run_defaults={
        "warmup": 100,
        "weight_decay": 0.0,
        "eval_strategy": "steps",
        "eval_steps": 200,
        "save_total_limit": 3,
        "lr": 3e-4,
        "batch": 4,
        "grad_acc": 32,
        "epoch": 3.0,
        "r_ab": 8,
        "train_on_inputs": True,
    },  # fmt: skip
    eval_defaults={"beam_size": 4, "max_new_tokens": 32},
    sources={
        "template": "finetune.py:323-343 (generate_prompt)",
        "answer_max_tokens": "finetune.py:155-164 (prompt + output cut together at cutoff_len 256)",
        "append_eos": "finetune.py:165-172 (EOS when it fits)",
        "train_on_inputs": "finetune.py:62",
        "validation_rule": "finetune.py:254-257 (train_test_split, seed 42)",
        "warmup": "finetune.py:279",
        "save_total_limit": "finetune.py:290",
        "lr": "finetune.py:40",
        "batch": "finetune.py:38 (micro_batch_size)",
        "grad_acc": "finetune.py:37-38 (128 / 4)",
        "epoch": "finetune.py:39",
        "eval_steps": "finetune.py:44",
        "r_ab": "finetune.py:47",
        "beam_size": "commonsense_evaluate.py:43",
        "max_new_tokens": "commonsense_evaluate.py:44",
    },  # fmt: skip
)

# The math task under the official HiRA code: GSM8K's path through train_hira.py (template_type 4, the prompt cut
# at token_length_map's 155 tokens, the answer at gen_max_new_token_map's 200), which MetaMathQA trains on too.
HIRA_MATH = replace(
    HIRA,
    task="math",
    summary="the official HiRA code's GSM8K path (train_hira.py, dataset/format_inputs.py) and metamath_eval.py",
    answer_max_tokens=200,
    append_eos=True,
    eval_prompt_max_tokens=155,
    run_defaults={**HIRA.run_defaults, "max_length": 155},
    eval_defaults={"beam_size": 4, "max_new_tokens": 200},
    scorers={"integer": "hira-number"},  # it rounds every prediction: only integer answers can match
    sources={
        **HIRA.sources,
        "template": "train_hira.py:229-231 (gsm8k: template_type 4, BOOLQ_TEMPLATE)",
        "answer_max_tokens": "train_hira.py:235-237 (target_length = gen_max_new_token_map['gsm8k'] = 200)",
        "append_eos": "format_inputs.py:169 (the meta_math training path, template_type 0, ends with EOS)",
        "max_length": "format_inputs.py:15-35 (token_length_map: meta_math and gsm8k 155, the prompt's bound)",
        "eval_prompt_max_tokens": "format_inputs.py:179-186 (prompt with BOS cut at 155)",
        "max_new_tokens": "format_inputs.py:37-57 (gen_max_new_token_map: meta_math and gsm8k 200)",
        "beam_size": "train_hira.py:404-419 (gsm8k: beam 4)",
        "scorer": "metamath_eval.py extract_answer_number (the number after the last 'The answer is: ', rounded)",
    },
)
# ConvAI2 under the official HiRA code: template_type 0, the whole sequence cut at 512 tokens, beam search with
# the length penalty and n-gram block of train_hira.py's last branch, 32 new tokens.
HIRA_DIALOGUE = replace(
    HIRA,
    task="dialogue",
    summary="the official HiRA code's ConvAI2 path (train_hira.py, dataset/format_inputs.py) and convai2_eval.py",
    template="CONTEXT: {instruction} TARGET: ",
    answer_max_tokens=512,
    append_eos=True,
    eval_prompt_max_tokens=512,
    run_defaults={**HIRA.run_defaults, "max_length": 512},
    eval_defaults={"beam_size": 4, "max_new_tokens": 32},
    generation={"length_penalty": 0.9, "no_repeat_ngram_size": 4},
    scorers={"text": "dialogue"},
    sources={
        **HIRA.sources,
        "template": "format_inputs.py:144 (template_type 0, 'CONTEXT: {cinput} TARGET: {target}'); train_hira.py:228",
        "answer_max_tokens": "format_inputs.py:169-172 (512 tokens; the reply tokenized apart, see NOT_REPLICATED)",
        "append_eos": "format_inputs.py:169",
        "max_length": "format_inputs.py:15-35 (token_length_map: convai2 512)",
        "eval_prompt_max_tokens": "format_inputs.py:179-186 (prompt with BOS cut at 512)",
        "max_new_tokens": "format_inputs.py:37-57 (gen_max_new_token_map: convai2 32)",
        "beam_size": "train_hira.py:420-425 (num_beams 4, length_penalty 0.9, no_repeat_ngram_size 4)",
        "generation": "train_hira.py:420-425",
        "scorer": "convai2_eval.py (clean_pred; BLEU, METEOR, ROUGE, BERTScore, F1, Dist)",
    },
)

# LLM-Adapters' math: finetune.py as for commonsense (its README's math commands), scored by evaluate.py.
LLM_ADAPTERS_MATH = replace(
    LLM_ADAPTERS,
    task="math",
    summary="LLM-Adapters' finetune.py on math_10k and evaluate.py (AGI-Edgerunners/LLM-Adapters)",
    eval_defaults={"beam_size": 4, "max_new_tokens": 256},
    scorers={"integer": "llm-adapters-number", "number": "llm-adapters-number", "letter": "llm-adapters-letter"},
    sources={
        **LLM_ADAPTERS.sources,
        "beam_size": "evaluate.py:37-68 (num_beams 4, no sampling)",
        "max_new_tokens": "evaluate.py:37-68 (max_new_tokens 256)",
        "scorer": "evaluate.py:272-298 (the last number, |label - prediction| <= 0.001; AQuA: the first A-E)",
    },
)

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (HIRA, LLM_ADAPTERS)}  # the commonsense variants
# (protocol, task) -> its variant for that task; a protocol that has none for a task refuses it.
TASK_PROTOCOLS: dict[tuple[str, str], Protocol] = {
    (p.name, p.task): p for p in (HIRA, LLM_ADAPTERS, HIRA_MATH, HIRA_DIALOGUE, LLM_ADAPTERS_MATH)
}
DEFAULT_PROTOCOL = HIRA.name

# Official behaviour that is a defect, not a choice: the correct behaviour is kept (README, "Not replicated").
NOT_REPLICATED: tuple[tuple[str, str, str], ...] = (
    (
        "Left-padded training without position ids",
        "hira: format_inputs.py:194 pads every prompt on the left to 256 tokens and passes no position_ids, so "
        "GPT-Neo's learned absolute positions of the real tokens shift with the prompt's length in training",
        "no padding inside an example and positions from 0, as at evaluation (generate derives positions from "
        "the attention mask); padding only at the end of a batch",
    ),
    (
        "Full fine-tuning in pure bf16",
        "hira: models/get_models.py:26-35 loads the model in bf16 and trains it so (weights and AdamW state)",
        "fp32 master weights and optimizer state with bf16 autocast: an update of lr 1e-5 rounds to nothing next "
        "to a bf16 weight of 0.02",
    ),
    (
        "A different prompt at evaluation than in training",
        "llm-adapters: commonsense_evaluate.py:121-140 drops the second space after 'request.' and the "
        "indentation of blank lines that finetune.py:323-343 trains with",
        "the training template at evaluation too",
    ),
    (
        "MetaMathQA trained in another prompt than GSM8K is evaluated in",
        "hira: train_hira.py:228-231 gives meta_math template_type 0 ('CONTEXT: {cinput} TARGET: {target}', "
        "format_inputs.py:144) with prompt and response cut together at 155 tokens (format_inputs.py:169-172), which "
        "cuts the final answer off most MetaMathQA responses, while gsm8k is evaluated in template_type 4",
        "math trains as train_hira.py trains gsm8k: template_type 4's prompt cut at 155 tokens and the response at "
        "200 (format_inputs.py:188-199), ended by EOS as the meta_math path ends it (format_inputs.py:169)",
    ),
    (
        "A ConvAI2 context mask that masks nothing",
        "hira: format_inputs.py:208-217 looks for 'TARGET:''s colon at len(context) - 2 of ids that begin with BOS, "
        "one position early, so the assertion fails, _end_idx becomes -1 and the whole context is trained on",
        "the context is masked, as the code means to (--train_on_inputs trains on it)",
    ),
    (
        "A ConvAI2 reply trained after other tokens than it is generated after",
        "hira: format_inputs.py:165-172 tokenizes 'CONTEXT: {context} TARGET: {reply}' as one text (the space joins "
        "the reply's first token) but evaluates after 'CONTEXT: {context} TARGET: ' (format_inputs.py:179-186), "
        "whose last token, the space alone, training never showed before a reply",
        "the context is tokenized as evaluation sees it and the reply apart (as the commonsense path does), each cut "
        "at 512 tokens",
    ),
    (
        "MAWPS refused by LLM-Adapters' scorer",
        "llm-adapters: evaluate.py:181, 274-281 leaves mawps out of --dataset and raises NotImplementedError for it, "
        "although its README:48 names MAWPS and dataset/mawps/test.json ships",
        "mawps is scored by the same number rule as the other numeric sets",
    ),
    (
        "An unseeded training shuffle",
        "llm-adapters: finetune.py:259 (train_val['train'].shuffle() without a seed)",
        "the Trainer's seeded order (--seed)",
    ),
)


def get_protocol(name: str, task: str = "commonsense") -> Protocol:
    """The protocol's variant for a task (commonsense, math, dialogue)."""
    if name not in PROTOCOLS:
        raise UserError(f"unknown --protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    try:
        return TASK_PROTOCOLS[(name, task)]
    except KeyError:
        offered = ", ".join(p for p, t in TASK_PROTOCOLS if t == task)
        raise UserError(f"protocol {name!r} has no {task} variant; {task} is defined under: {offered}") from None
