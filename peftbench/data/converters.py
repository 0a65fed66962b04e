"""Benchmark records in their hub / official schema -> the LLM-Adapters instruction format.

Math and dialogue records too: MetaMathQA's (query, response), GSM8K's (question, answer '... #### N') and the
episodes of ParlAI's ConvAI2 files (persona, history, reply; ``peftbench.data.sources`` reads the file).

For the eight LLM-Adapters tasks the text is exactly LLM-Adapters' (a parity test round-trips every
example in the published files); CommonsenseQA gets the ARC style with answer1..answer5. Each
converter accepts the Hugging Face hub schema and the benchmark's original release schema where they
differ (ARC/OpenBookQA nest the question; PIQA/SIQA ship labels in a separate file, merged as "label").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Record = dict[str, Any]
Example = dict[str, str]


def _example(instruction: str, answer: str) -> Example:
    return {"instruction": instruction, "input": "", "output": f"the correct answer is {answer}", "answer": answer}


def _numbered(prefix: str, texts: Sequence[str], separator: str = " ") -> str:
    return separator.join(f"{prefix}{i}: {text}" for i, text in enumerate(texts, start=1))


def _answer_format(prefix: str, count: int) -> str:
    return "/".join(f"{prefix}{i}" for i in range(1, count + 1))


def _choices(record: Record) -> tuple[list[str], list[str]]:
    """(texts, labels) from the hub's {"text": [...], "label": [...]} or the release's [{"text", "label"}]."""
    choices = record["choices"] if "choices" in record else record["question"]["choices"]
    if isinstance(choices, dict):
        return list(choices["text"]), list(choices["label"])
    return [c["text"] for c in choices], [c["label"] for c in choices]


def _multiple_choice(question: str, record: Record) -> Example:
    texts, labels = _choices(record)
    answer = f"answer{labels.index(str(record['answerKey'])) + 1}"
    instruction = (
        f"Please choose the correct answer to the question: {question}\n\n"
        f"{_numbered('Answer', texts)}\n\nAnswer format: {_answer_format('answer', len(texts))}"
    )
    return _example(instruction, answer)


def boolq(record: Record) -> Example:
    answer = record["answer"]
    if not isinstance(answer, bool):
        raise ValueError(f"answer {answer!r} is not a boolean")
    instruction = (
        f"Please answer the following question with true or false, question: {record['question']}?\n\n"
        "Answer format: true/false"
    )
    return _example(instruction, "true" if answer else "false")


def piqa(record: Record) -> Example:
    instruction = (
        f"Please choose the correct solution to the question: {record['goal']}\n\n"
        f"Solution1: {record['sol1']}\n\nSolution2: {record['sol2']}\n\nAnswer format: solution1/solution2"
    )
    return _example(instruction, f"solution{_label(record['label'], 0, 2)}")


def social_i_qa(record: Record) -> Example:
    options = [record["answerA"], record["answerB"], record["answerC"]]
    instruction = (
        f"Please choose the correct answer to the question: {record['context']} {record['question']}\n\n"
        f"{_numbered('Answer', options)}\n\nAnswer format: answer1/answer2/answer3"
    )
    return _example(instruction, f"answer{_label(record['label'], 1, 3)}")


def hellaswag(record: Record) -> Example:
    endings = record["endings"]
    instruction = (
        f"Please choose the correct ending to complete the given sentence: {record['activity_label']}: {record['ctx']}"
        f"\n\n{_numbered('Ending', endings)}\n\nAnswer format: {_answer_format('ending', len(endings))}"
    )
    return _example(instruction, f"ending{_label(record['label'], 0, len(endings))}")


def winogrande(record: Record) -> Example:
    instruction = (
        "Please choose the correct answer to fill in the blank to complete the given sentence: "
        f"{record['sentence']}\n\nOption1: {record['option1']} Option2: {record['option2']} "
        "Answer format: option1/option2"
    )
    return _example(instruction, f"option{_label(record['answer'], 1, 2)}")


def arc(record: Record) -> Example:
    question = record["question"]
    return _multiple_choice(question["stem"] if isinstance(question, dict) else question, record)


def openbookqa(record: Record) -> Example:
    question = record["question_stem"] if "question_stem" in record else record["question"]["stem"]
    return _multiple_choice(question, record)


def commonsense_qa(record: Record) -> Example:
    return _multiple_choice(record["question"], record)


# The marker MetaMathQA's responses end with, and the one HiRA's scorer (metamath_eval.py) reads the answer after.
ANSWER_MARKER = "The answer is: "


def metamath(record: Record) -> Example:
    """A MetaMathQA record; its answer is the text after the response's last 'The answer is: '."""
    response = record["response"]
    if ANSWER_MARKER not in response:
        raise ValueError(f"response has no {ANSWER_MARKER.strip()!r}")
    answer = response.rsplit(ANSWER_MARKER, 1)[1].strip()
    return {"instruction": record["query"], "input": "", "output": response, "answer": answer}


def gsm8k(record: Record) -> Example:
    """GSM8K's own schema: the solution ends '#### <number>' (no thousands separators in the gold number)."""
    solution, marker, final = record["answer"].rpartition("####")
    if not marker:
        raise ValueError("answer has no '####' before its final number")
    number = final.strip().replace(",", "")
    return {"instruction": record["question"], "input": "", "output": record["answer"], "answer": number}


# Speaker markers of the dialogue history: the official decoding cuts a reply at 'Q:' and 'R:' (train_hira.py:447,
# convai2_eval.py clean_pred), the markers its DailyDialog history uses (dataset_hg.py:58-60); the reply is 'R'.
PARTNER, SELF = "Q: ", "R: "


def parlai(record: Record) -> Example:
    """One reply of a ConvAI2 self-persona episode: the speaker's persona, then the history with the partner's
    turns as 'Q: ' and the speaker's as 'R: ' (the last turn is the partner's), and the reply as the answer."""
    history = record["history"]
    turns = [(PARTNER if (len(history) - i) % 2 else SELF) + text.strip() for i, text in enumerate(history)]
    context = " ".join([*(line.strip() for line in record["persona"]), *turns])
    reply = record["reply"].strip()
    return {"instruction": context, "input": "", "output": reply, "answer": reply, "dialogue": str(record["dialogue"])}


def _label(value: Any, first: int, count: int) -> int:
    """A label as its 1-based option number, checked to be in range (labels are 0- or 1-based ints or strings)."""
    number = int(value) - first + 1
    if not 1 <= number <= count:
        raise ValueError(f"label {value!r} is outside the {count} options")
    return number


CONVERTERS: dict[str, Callable[[Record], Example]] = {
    "boolq": boolq,
    "piqa": piqa,
    "social_i_qa": social_i_qa,
    "hellaswag": hellaswag,
    "winogrande": winogrande,
    "arc": arc,
    "openbookqa": openbookqa,
    "commonsense_qa": commonsense_qa,
    "metamath": metamath,
    "gsm8k": gsm8k,
    "parlai": parlai,
}
