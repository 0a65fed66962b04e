"""The ConvAI2 metrics against the official formulas, transcribed below from HiRA's convai2_eval.py and nmt's bleu."""

from __future__ import annotations

import collections
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sacrebleu")
pytest.importorskip("rouge_score")
pytest.importorskip("nltk")

from peftbench.evaluate import dialogue_metrics as dm  # noqa: E402

needs_wordnet = pytest.mark.skipif(
    not Path(dm.WORDNET_DIR, "data.noun").is_file(), reason="Debian's wordnet-base (.ci/run installs it)"
)


# ---- the official formulas, transcribed ------------------------------------------------------------------------
def official_f1(prediction: str, ground_truths: list[str]) -> float:
    """convai2_eval.py's f1_scorer."""

    def f1(prediction: str, ground_truth: str) -> float:
        prediction_tokens = prediction.split()
        ground_truth_tokens = ground_truth.split()
        common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
        num_same = sum(common.values())
        if num_same == 0:
            return 0
        precision = 1.0 * num_same / len(prediction_tokens)
        recall = 1.0 * num_same / len(ground_truth_tokens)
        return (2 * precision * recall) / (precision + recall)

    return max([f1(prediction, gt) for gt in ground_truths])


def official_distinct(corpus: list[str]) -> tuple[float, float]:
    """convai2_eval.py's eval_distinct."""
    unigrams, bigrams = [], []
    for rep in corpus:
        temp = rep.strip().split(" ")
        unigrams += temp
        for i in range(len(temp) - 1):
            bigrams.append(temp[i] + " " + temp[i + 1])
    return len(set(unigrams)) * 1.0 / len(unigrams), len(set(bigrams)) * 1.0 / len(bigrams)


def nmt_ngrams(segment: list[str], max_order: int) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for order in range(1, max_order + 1):
        for i in range(0, len(segment) - order + 1):
            counts[tuple(segment[i : i + order])] += 1
    return counts


def nmt_compute_bleu(reference_corpus, translation_corpus, max_order: int = 4):  # noqa: ANN001, ANN201
    """tensorflow/nmt's compute_bleu (smooth=False), which Hugging Face evaluate's 'bleu' calls."""
    matches_by_order = [0] * max_order
    possible_matches_by_order = [0] * max_order
    reference_length = translation_length = 0
    for references, translation in zip(reference_corpus, translation_corpus, strict=True):
        reference_length += min(len(r) for r in references)
        translation_length += len(translation)
        merged: collections.Counter = collections.Counter()
        for reference in references:
            merged |= nmt_ngrams(reference, max_order)
        overlap = nmt_ngrams(translation, max_order) & merged
        for ngram in overlap:
            matches_by_order[len(ngram) - 1] += overlap[ngram]
        for order in range(1, max_order + 1):
            possible = len(translation) - order + 1
            if possible > 0:
                possible_matches_by_order[order - 1] += possible
    precisions = [
        matches_by_order[i] / possible_matches_by_order[i] if possible_matches_by_order[i] > 0 else 0.0
        for i in range(max_order)
    ]
    geo_mean = math.exp(sum((1.0 / max_order) * math.log(p) for p in precisions)) if min(precisions) > 0 else 0
    ratio = float(translation_length) / reference_length
    bp = 1.0 if ratio > 1.0 else math.exp(1 - 1.0 / ratio)
    return geo_mean * bp, precisions


def evaluate_bleu(predictions: list[str], references: list[list[str]]):  # noqa: ANN201
    """evaluate's bleu: its tokenizer_13a (sacrebleu's, returning words) and nmt's compute_bleu."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tokenize = Tokenizer13a()
    return nmt_compute_bleu(
        [[tokenize(r).split() for r in refs] for refs in references], [tokenize(p).split() for p in predictions]
    )


# ---- fixed cases: several references, a short prediction, no bigram, punctuation, an empty prediction ----------
PREDICTIONS = [
    "Hi! I love hiking, and you?",
    "i'm a teacher.",
    "yes",
    "",
    "Do you like cats? I have two cats.",
    "i love to go hiking in the mountains with my dog .",
]
REFERENCES = [
    ["Hello! I love hiking too. What about you?", "hi, i like hiking."],
    ["I am a teacher, I teach math.", "teacher here"],
    ["yes , i do"],
    ["what do you do for work?"],
    ["I like dogs. Do you have pets?", "cats are great", "no"],
    ["i love to go hiking in the woods with my dog .", "hiking is fun"],
]


def test_clean_prediction_cuts_at_the_first_marker_in_the_official_order() -> None:
    assert dm.clean_prediction("  I like tea. TARGET: Q: x ") == "I like tea."
    assert dm.clean_prediction("yes R: more TARGET: no") == "yes"  # TARGET: cut first, then R:
    assert dm.clean_prediction("Q: all gone") == ""
    assert dm.clean_prediction("\tplain\n") == "plain"


def test_group_references_joins_consecutive_items_with_the_same_context() -> None:
    predictions, references, firsts = dm.group_references(
        ["c1", "c1", "c2", "c1"], ["p0", "p1", "p2", "p3"], ["g0", "g1", "g2", "g3"]
    )
    assert predictions == ["p0", "p2", "p3"]
    assert references == [["g0", "g1"], ["g2"], ["g3"]]
    assert firsts == [0, 2, 3]


@needs_wordnet
def test_every_metric_equals_the_official_formula_on_the_fixed_cases() -> None:
    scores = dm.score_dialogues(PREDICTIONS, REFERENCES, bert_model=None)
    bleu, precisions = evaluate_bleu(PREDICTIONS, REFERENCES)
    assert bleu > 0
    assert scores.metrics["bleu"] == pytest.approx(bleu, abs=1e-12)
    for n in range(4):
        assert scores.metrics[f"bleu_{n + 1}"] == pytest.approx(precisions[n], abs=1e-12)
    f1 = [official_f1(p, r) for p, r in zip(PREDICTIONS, REFERENCES, strict=True)]
    assert scores.metrics["f1"] == pytest.approx(float(np.mean(f1)), abs=1e-12)
    assert [e["f1"] for e in scores.per_example] == pytest.approx(f1, abs=1e-12)
    dist_1, dist_2 = official_distinct(PREDICTIONS)
    assert (scores.metrics["dist_1"], scores.metrics["dist_2"]) == pytest.approx((dist_1, dist_2), abs=1e-12)
    assert set(scores.metrics) == {*dm.DIALOGUE_METRICS, dm.TABLE2_AVERAGE}
    assert (
        scores.metrics["avg6"] is None and scores.not_computed["avg6"] == "needs bert_f1, bert_recall, bert_precision"
    )
    assert set(scores.not_computed) == {"bert_f1", "bert_precision", "bert_recall", "avg6"}
    assert all(v is None for k, v in scores.metrics.items() if k.startswith("bert"))
    assert all(0 <= v <= 1 for v in scores.metrics.values() if v is not None)
    empty = scores.per_example[3]
    assert empty["f1"] == empty["meteor"] == empty["rouge_1"] == empty["rouge_l"] == 0.0


def test_13a_tokens_split_punctuation_as_evaluate_does() -> None:
    scores = dm.score_dialogues(["Hello, world! It's 3.5-4."], [["x"]], bert_model=None)
    tokens = "Hello , world ! It's 3.5 - 4 .".split()  # apostrophe kept, no split inside the number
    assert scores._corpus.bleu[0, 0] == len(tokens)


def test_brevity_penalty_uses_the_shortest_reference_not_sacrebleus_closest() -> None:
    import sacrebleu

    scores = dm.score_dialogues(["a b c d e f"], [["a b c d e f g h", "a b c"]], bert_model=None)
    assert scores.metrics["bleu"] == pytest.approx(1.0)  # c = 6 > r = 3: no penalty
    closest = sacrebleu.corpus_bleu(["a b c d e f"], [["a b c d e f g h"], ["a b c"]]).score / 100
    assert closest == pytest.approx(math.exp(1 - 8 / 6))
    short = dm.score_dialogues(["a b c d e"], [["a b c d e f g h i j"]], bert_model=None)
    assert short.metrics["bleu"] == pytest.approx(math.exp(1 - 10 / 5))
    equal = dm.score_dialogues(["a b c d"], [["a b c d"]], bert_model=None)
    assert equal.metrics["bleu"] == pytest.approx(1.0)  # ratio 1: exp(0)


def test_a_corpus_without_bigram_or_token_is_not_scored_where_the_official_divides_by_zero() -> None:
    one_word = dm.score_dialogues(["yes", "no"], [["yes i do"], ["no"]], bert_model=None)
    assert one_word.metrics["bleu"] == 0.0 and one_word.metrics["bleu_2"] == 0.0  # precision 0, BLEU 0
    assert one_word.metrics["bleu"] == pytest.approx(evaluate_bleu(["yes", "no"], [["yes i do"], ["no"]])[0])
    assert one_word.metrics["dist_2"] is None and "bigram" in one_word.not_computed["dist_2"]
    assert one_word.metrics["dist_1"] == 1.0
    empty = dm.score_dialogues(["", " "], [["yes"], ["no"]], bert_model=None)
    assert all(empty.metrics[k] is None for k in ("bleu", "bleu_1", "bleu_4"))
    assert "13a token" in empty.not_computed["bleu"]
    assert empty.metrics["dist_1"] == 0.5  # the official counts '' as a unigram: 1 type over 2
    with pytest.raises(ZeroDivisionError):
        evaluate_bleu(["", ""], [["yes"], ["no"]])


def test_rouge_is_rouge_score_f_without_stemmer_best_reference_and_exact_mean() -> None:
    predictions, references = ["The CAT, sat!", "cats sitting"], [["the cat sat on the mat", "a dog"], ["cat sits"]]
    scores = dm.score_dialogues(predictions, references, bert_model=None)
    first, second = scores.per_example
    assert first["rouge_1"] == pytest.approx(2 / 3)  # P 3/3, R 3/6
    assert first["rouge_2"] == pytest.approx(4 / 7)  # P 2/2, R 2/5
    assert first["rouge_l"] == pytest.approx(2 / 3)  # LCS 3
    assert second["rouge_1"] == 0.0  # a stemmer would match cats/cat
    assert scores.metrics["rouge_1"] == pytest.approx(1 / 3)  # the mean, not a bootstrap median


@needs_wordnet
def test_meteor_is_nltks_meteor_score_on_the_same_tokens_with_debians_wordnet() -> None:
    from nltk.tokenize import word_tokenize
    from nltk.translate.meteor_score import meteor_score

    wordnet = dm.load_wordnet(dm.WORDNET_DIR)
    scores = dm.score_dialogues(PREDICTIONS, REFERENCES, bert_model=None)

    def tokens(text: str) -> list[str]:
        return word_tokenize(text, preserve_line=True)

    expected = [
        meteor_score([tokens(r) for r in refs], tokens(p), wordnet=wordnet, alpha=0.9, beta=3, gamma=0.5)
        for p, refs in zip(PREDICTIONS, REFERENCES, strict=True)
    ]
    assert [e["meteor"] for e in scores.per_example] == pytest.approx(expected, abs=1e-12)
    assert scores.metrics["meteor"] == pytest.approx(float(np.mean(expected)), abs=1e-12)
    # one match through WordNet synonymy only (P = R = 1, one chunk: penalty 0.5); nltk compares synonyms with the
    # Porter stems of the words left, so car -> automobile ("automobil") does not match, auto -> car does
    assert dm.score_dialogues(["auto"], [["car"]], bert_model=None).metrics["meteor"] == pytest.approx(0.5)


def test_the_named_tokenisation_deviation_is_a_period_inside_the_text() -> None:
    from nltk.tokenize import word_tokenize

    text = "I like it. You too."
    ours = word_tokenize(text, preserve_line=True)
    official = word_tokenize("I like it.", preserve_line=True) + word_tokenize("You too.", preserve_line=True)
    assert ours == ["I", "like", "it.", "You", "too", "."]
    assert official == ["I", "like", "it", ".", "You", "too", "."]  # punkt splits sentences first
    try:
        assert word_tokenize(text) == official  # where NLTK's punkt_tab is installed
    except LookupError:
        pass  # punkt_tab is not installed: the reason for the deviation


def test_meteor_without_wordnet_is_not_computed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(dm, "WORDNET_DIR", str(tmp_path))
    scores = dm.score_dialogues(["yes"], [["yes"]], bert_model=None)
    assert scores.metrics["meteor"] is None and "WordNet" in scores.not_computed["meteor"]
    assert "meteor" not in scores.per_example[0]


# ---- BERTScore ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer RoBERTa with a byte-level tokenizer (256 byte symbols, no merges)."""
    import torch
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder = tmp_path_factory.mktemp("tiny_roberta")
    symbols = sorted(set(bytes_to_unicode().values()))
    vocab = {token: i for i, token in enumerate(["<s>", "<pad>", "</s>", "<unk>", *symbols, "<mask>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    RobertaTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=64).save_pretrained(
        folder
    )
    config = RobertaConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=80, pad_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(folder)
    return folder


def test_bertscore_runs_on_a_local_model_with_the_official_encoding(tiny_roberta: Path) -> None:
    pytest.importorskip("bert_score")
    from bert_score.utils import sent_encode

    model = str(tiny_roberta)
    predictions = ["hi there", "", "i like cats"]
    references = [["hello there", "hi there"], ["something"], ["i love dogs", "cats are nice"]]
    scores = dm.score_dialogues(predictions, references, bert_model=model, bert_layers=2, bert_device="cpu")
    assert not {k for k in scores.not_computed if k.startswith("bert")}
    identical, empty, third = scores.per_example
    assert identical["bert_f1"] == pytest.approx(1.0, abs=1e-5)  # the same text: every cosine is 1
    assert empty["bert_f1"] == empty["bert_precision"] == empty["bert_recall"] == 0.0  # bert-score's empty rule
    for name in ("bert_f1", "bert_precision", "bert_recall"):
        singles = [
            dm.score_dialogues(["i like cats"], [[r]], bert_model=model, bert_layers=2).per_example[0][name]
            for r in references[2]
        ]
        assert third[name] == pytest.approx(max(singles), abs=1e-6)  # best reference, per score
        assert scores.metrics[name] == pytest.approx(np.mean([e[name] for e in scores.per_example]), abs=1e-6)
    # With all six of Table 2's metrics, its average, resampled with them.
    six = [scores.metrics[name] for name in dm.TABLE2_METRICS]
    assert scores.metrics["avg6"] == pytest.approx(np.mean(six), abs=1e-12)
    low, high = scores.intervals([0, 1, 2], samples=200)["avg6"]
    assert low <= scores.metrics["avg6"] <= high
    tokenizer = dm._bert_scorer(model, 2, "cpu")._tokenizer  # the transformers-4 encoding bert-score asks for
    assert sent_encode(tokenizer, "hi there") == tokenizer.encode(" hi there")
    assert sent_encode(tokenizer, "") == [tokenizer.cls_token_id, tokenizer.sep_token_id]


def test_bertscore_without_its_model_is_not_computed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("bert_score")
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # huggingface_hub read the variables when first imported (maybe by another test): set what it read, too
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    scores = dm.score_dialogues(["hi"], [["hello"]])  # roberta-large, bert-score's layer 17
    for name in ("bert_f1", "bert_precision", "bert_recall"):
        assert scores.metrics[name] is None
        assert "'roberta-large' is not available" in scores.not_computed[name]
    assert "bert_f1" not in scores.per_example[0] and scores.metrics["f1"] == 0.0
    unknown = dm.score_dialogues(["hi"], [["hello"]], bert_model=str(tmp_path))
    assert "give its layer (peftbench eval --bert_score_layers" in unknown.not_computed["bert_f1"]


# ---- bootstrap over dialogues -------------------------------------------------------------------------------------
VOCABULARY = [f"w{i}" for i in range(60)] + ["i", "you", "the", "a", ".", "?", ","]


def synthetic(dialogues: int, seed: int) -> tuple[list[str], list[list[str]], list[int]]:
    """Dialogues of 3 to 7 turns; each prediction is its first reference with a share of words replaced."""
    rng = random.Random(seed)
    predictions, references, ids = [], [], []
    for dialogue in range(dialogues):
        for _ in range(rng.randint(3, 7)):
            gold = [rng.choice(VOCABULARY) for _ in range(rng.randint(4, 12))]
            predictions.append(" ".join(w if rng.random() > 0.3 else rng.choice(VOCABULARY) for w in gold))
            other = [" ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(3, 9)))] if rng.random() < 0.3 else []
            references.append([" ".join(gold), *other])
            ids.append(dialogue)
    return predictions, references, ids


@needs_wordnet
def test_intervals_contain_the_point_and_shrink_with_more_dialogues() -> None:
    small, large = synthetic(60, seed=1), synthetic(600, seed=2)
    small_scores = dm.score_dialogues(*small[:2], bert_model=None)
    large_scores = dm.score_dialogues(*large[:2], bert_model=None)
    small_iv, large_iv = small_scores.intervals(small[2], samples=400), large_scores.intervals(large[2], samples=400)
    computed = {k for k, v in small_scores.metrics.items() if v is not None}
    assert set(small_iv) == computed == set(dm.DIALOGUE_METRICS) - {"bert_f1", "bert_precision", "bert_recall"}
    for name, (low, high) in small_iv.items():
        assert low <= small_scores.metrics[name] <= high, name
        assert large_iv[name][0] <= large_scores.metrics[name] <= large_iv[name][1], name
        assert large_iv[name][1] - large_iv[name][0] < small_iv[name][1] - small_iv[name][0], name
    assert small_scores.intervals(small[2], samples=400) == small_iv  # seeded


def test_resampling_recomputes_each_metric_from_the_drawn_dialogues() -> None:
    predictions, references, ids = synthetic(20, seed=3)
    scores = dm.score_dialogues(predictions, references, bert_model=None)
    dialogue, counts = dm._dialogue_draws(ids, len(ids), 3, 0)
    again = scores._resample(np.vstack([np.ones(20), counts]), dialogue)
    assert set(again) == {k for k, v in scores.metrics.items() if v is not None and not k.startswith("dist")}
    for row, weights in enumerate(counts):
        drawn = [i for d in range(20) for _ in range(int(weights[d])) for i in np.flatnonzero(dialogue == d)]
        redone = dm.score_dialogues([predictions[i] for i in drawn], [references[i] for i in drawn], bert_model=None)
        for name, value in again.items():
            assert value[0] == pytest.approx(scores.metrics[name], abs=1e-12), name  # all drawn once
            assert value[row + 1] == pytest.approx(redone.metrics[name], abs=1e-12), name


def test_dist_uses_a_jackknife_over_dialogues_as_resampling_repeats_their_ngrams() -> None:
    predictions, references, ids = synthetic(30, seed=7)
    scores = dm.score_dialogues(predictions, references, bert_model=None)
    dialogue, counts = dm._dialogue_draws(ids, len(ids), 20, 0)
    replicates = scores._jackknife(dialogue)
    for d in range(30):
        rest = [p for p, i in zip(predictions, dialogue, strict=True) if i != d]
        assert (replicates["dist_1"][d], replicates["dist_2"][d]) == pytest.approx(official_distinct(rest), abs=1e-12)
    resampled = [
        official_distinct([p for p, i in zip(predictions, dialogue, strict=True) for _ in range(int(row[i]))])[1]
        for row in counts
    ]
    assert max(resampled) < scores.metrics["dist_2"]  # a percentile interval would miss the point value


def test_resampling_draws_whole_dialogues() -> None:
    # Every dialogue is one item repeated: drawing dialogues is drawing those items, each weighing 4 (Dist, whose
    # token count grows with the copies, is scaled by 4); drawing items instead would give a narrower interval.
    predictions, references, _ = synthetic(40, seed=4)
    one = dm.score_dialogues(predictions, references, bert_model=None)
    copies = dm.score_dialogues(
        [p for p in predictions for _ in range(4)], [r for r in references for _ in range(4)], bert_model=None
    )
    by_dialogue = copies.intervals([i for i in range(len(predictions)) for _ in range(4)], samples=300)
    alone = one.intervals(list(range(len(predictions))), samples=300)
    for name, (low, high) in alone.items():
        scale = 4 if name.startswith("dist") else 1
        assert by_dialogue[name] == pytest.approx((low / scale, high / scale), abs=1e-12), name
    by_item = copies.intervals(list(range(4 * len(predictions))), samples=300)
    for name in ("f1", "bleu", "rouge_l"):
        assert by_item[name][1] - by_item[name][0] < 0.8 * (alone[name][1] - alone[name][0]), name


def test_paired_bootstrap_p_values() -> None:
    predictions, references, ids = synthetic(80, seed=5)
    rng = random.Random(6)
    worse = [" ".join(w if rng.random() > 0.4 else "zzz" for w in p.split()) for p in predictions]
    good = dm.score_dialogues(predictions, references, bert_model=None)
    bad = dm.score_dialogues(worse, references, bert_model=None)
    p = dm.paired_bootstrap(good, bad, ids, samples=500)
    assert set(p) == {k for k, v in good.metrics.items() if v is not None}
    for name in ("bleu", "f1", "rouge_1", "rouge_l", "bleu_1"):
        assert p[name] == pytest.approx(1 / 501), name  # no resample comes near a difference of zero
    assert p["dist_1"] < 1e-3 and p["dist_2"] < 1e-3  # "zzz" repeated: far less diverse
    assert dm.paired_bootstrap(bad, good, ids, samples=500) == p  # two-sided
    assert all(v == 1.0 for v in dm.paired_bootstrap(good, good, ids, samples=100).values())
    other = dm.score_dialogues(predictions, [[r[0] + " x"] for r in references], bert_model=None)
    with pytest.raises(ValueError, match="same items"):
        dm.paired_bootstrap(good, other, ids)


def test_one_dialogue_gives_no_paired_test() -> None:
    first = dm.score_dialogues(["a b c", "d e f"], [["a b c"], ["d e"]], bert_model=None)
    second = dm.score_dialogues(["a b", "x y z"], [["a b c"], ["d e"]], bert_model=None)
    assert dm.paired_bootstrap(first, second, [0, 0]) == {}  # resampling one dialogue gives it back every time
    assert set(dm.paired_bootstrap(first, second, [0, 1], samples=50)) >= {"bleu", "f1", "meteor"}
