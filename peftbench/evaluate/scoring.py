"""From generated text to a task's numbers, by the scorer the protocol names for the dataset's kind of answer.

- keyword (commonsense): the first answer keyword in the text, LLM-Adapters' rule (``extract.py``);
- hira-number, llm-adapters-number, llm-adapters-letter (math): the official extraction rules (``math_answers.py``);
- dialogue (ConvAI2): corpus metrics after the official ``clean_pred`` (``dialogue_metrics.py``).

The first two give each example a prediction and a verdict, summed into accuracy; the third gives corpus metrics,
each with a bootstrap interval over test dialogues. The evaluator calls these and never branches on a name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from peftbench.data.protocols import Protocol
from peftbench.data.registry import DatasetSpec
from peftbench.data.sources import Example
from peftbench.evaluate.dialogue_metrics import DialogueScores, clean_prediction, group_references, score_dialogues
from peftbench.evaluate.extract import extract_answer
from peftbench.evaluate.intervals import bootstrap_ci
from peftbench.evaluate.math_answers import SCORERS as MATH_SCORERS

CORPUS_SCORERS = ("dialogue",)
# (generated text, example) -> (the extracted answer, None or "" when none is found; whether it is right)
AnswerScorer = Callable[[str, Example], tuple[str | None, bool]]


def scorer_name(spec: DatasetSpec, protocol: Protocol, mode: str) -> str:
    """The scorer of a dataset under a protocol and evaluation mode, or one error line saying why there is none.
    Log-likelihood picks an option, judged as keyword matching judges it (EvalConfig refuses it where the dataset
    has no options)."""
    if mode == "loglik":
        return "keyword"
    return protocol.scorer(spec.name, spec.answer_kind)


def answer_scorer(spec: DatasetSpec, name: str) -> AnswerScorer:
    """The per-example scorer called ``name``: keyword match keeps '' for no keyword, as results always have."""
    if name == "keyword":

        def keyword(text: str, example: Example) -> tuple[str, bool]:
            predicted = extract_answer(text, spec.keywords)
            return predicted, predicted == example["answer"]

        return keyword
    number_rule = MATH_SCORERS[name]
    return lambda text, example: number_rule(text, example["answer"])


def accuracy_summary(predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy and its counts (an extracted answer of None or '' counts as none found)."""
    correct = sum(p["correct"] for p in predictions)
    summary = {
        "metrics": ["accuracy"],
        "accuracy": correct / len(predictions),
        "accuracy_ci": list(bootstrap_ci([p["correct"] for p in predictions])),  # the analysis's interval
        "correct": correct,
        "total": len(predictions),
        "no_answer": sum(not p["predicted"] for p in predictions),
    }
    if all("predicted_norm" in p for p in predictions):
        summary["accuracy_norm"] = sum(p["predicted_norm"] == p["answer"] for p in predictions) / len(predictions)
    return summary


def dialogue_summary(
    predictions: list[dict[str, Any]], examples: dict[int, Example], bert_model: str | None, bert_layers: int | None
) -> dict[str, Any]:
    """ConvAI2's metrics over the predictions (in example order), each with its 95% interval over test dialogues.

    Predictions are cleaned as the official ``clean_pred`` does, and each row gets its dialogue and its own metric
    values; a metric that could not be computed is None, with its reason under ``not_computed``."""
    for row in predictions:
        row["predicted"] = clean_prediction(row["generated"])
        row["dialogue"] = examples[row["index"]].get("dialogue", str(row["index"]))
    scores, dialogue_ids, firsts = score_predictions(predictions, bert_model, bert_layers)
    intervals = scores.intervals(dialogue_ids)
    for first, values in zip(firsts, scores.per_example, strict=True):
        predictions[first].update(values)
    summary: dict[str, Any] = {
        "metrics": [k for k, v in scores.metrics.items() if v is not None],
        "total": len(predictions),
        "scored_items": len(firsts),  # consecutive replies with one context are one item (the official grouping)
    }
    for key, value in scores.metrics.items():
        summary[key] = value
        summary[f"{key}_ci"] = list(intervals[key]) if key in intervals else None
    summary["not_computed"] = scores.not_computed
    summary["dialogues"] = len(set(dialogue_ids))
    return summary


def score_predictions(
    predictions: list[dict[str, Any]], bert_model: str | None, bert_layers: int | None = None
) -> tuple[DialogueScores, list[int], list[int]]:
    """(scores, each scored item's dialogue, each item's first prediction row) of cleaned prediction rows: consecutive
    rows with one context share their references, the official grouping."""
    texts, references, firsts = group_references(
        [p["prompt"] for p in predictions], [p["predicted"] for p in predictions], [p["answer"] for p in predictions]
    )
    scores = score_dialogues(texts, references, bert_model, bert_layers, clean=False)
    dialogues = [str(predictions[first].get("dialogue", first)) for first in firsts]
    numbers = {label: i for i, label in enumerate(dict.fromkeys(dialogues))}
    return scores, [numbers[d] for d in dialogues], firsts
