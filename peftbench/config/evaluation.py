"""``EvalConfig``: what one evaluation does, validated where it is built (``peftbench eval``'s flags)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from peftbench.config.checks import TRACKERS, check_tracker, require_positive
from peftbench.config.choices import BAD_RECORD_MODES, EVAL_MODES, HUB_REVISIONS_HELP, default_data_dir, flag_help
from peftbench.data.protocols import PROTOCOLS, Protocol, get_protocol
from peftbench.data.registry import get_dataset, resolve_names
from peftbench.errors import UserError
from peftbench.hub import parse_pins


@dataclass
class EvalConfig:
    """What one evaluation does: which model, which benchmark, how to decode."""

    ckpt: str | None = field(default=None, metadata=flag_help("Checkpoint folder to evaluate (a run's checkpoint-N)."))
    model_name: str | None = field(
        default=None, metadata=flag_help("Evaluate this base model zero-shot instead of a checkpoint.")
    )
    dataset: str = field(
        default="boolq",
        metadata=flag_help(
            "Benchmark(s): a name, a comma-separated list, 'all' (the nine commonsense benchmarks) or 'math' "
            "(LLM-Adapters' math suite)."
        ),
    )
    eval_mode: str = field(
        default="generate",
        metadata=flag_help(
            "generate: beam search + answer keyword (the papers' protocol); "
            "loglik: argmax of each option's response log-probability.",
            choices=EVAL_MODES,
        ),
    )
    protocol: str | None = field(
        default=None,
        metadata=flag_help(
            "Prompt and decoding protocol; default: the checkpoint's own (hira for a base model).",
            choices=tuple(PROTOCOLS),
        ),
    )
    batch: str = field(
        default="auto",
        metadata=flag_help(
            "Questions per pass (generation prompts, or log-likelihood questions), or 'auto': the fastest size "
            "measured on the first batches (scores do not depend on it)."
        ),
    )
    beam_size: int | None = field(default=None, metadata=flag_help("Beams for generation. Protocol default (4)."))
    max_new_tokens: int | None = field(
        default=None,
        metadata=flag_help("Maximum generated tokens per answer. Protocol default (hira: 16; math 200, dialogue 32)."),
    )
    max_eval_samples: int | None = field(
        default=None, metadata=flag_help("Evaluate a seeded sample of this many examples.")
    )
    load_bit: int = field(default=16, metadata=flag_help("Precision, as for training.", choices=(16, 32)))
    seed: int = field(default=36, metadata=flag_help("Seed of the evaluation sample."))
    output_dir: str | None = field(default=None, metadata=flag_help("Where results go; default the checkpoint folder."))
    overwrite: bool = field(default=False, metadata=flag_help("Redo datasets whose complete results already exist."))
    on_bad_record: str = field(
        default="error",
        metadata=flag_help("Test records that would be mislabelled: error or skip.", choices=BAD_RECORD_MODES),
    )
    report_to: str = field(
        default="none",
        metadata=flag_help("Log the accuracies to the tracker run of the checkpoint's training run.", choices=TRACKERS),
    )
    hub_revisions: str | None = field(default=None, metadata=flag_help(HUB_REVISIONS_HELP))
    data_dir: str = field(default_factory=default_data_dir, metadata=flag_help("As for training."))
    bert_score_model: str = field(
        default="roberta-large",
        metadata=flag_help(
            "Dialogue: BERTScore's model (a hub id or folder; bert-score's default for English), or 'none'. A model "
            "that cannot be loaded leaves BERTScore recorded as not computed, with the reason."
        ),
    )
    bert_score_layers: int | None = field(
        default=None,
        metadata=flag_help(
            "Dialogue: the layer BERTScore reads; default bert-score's for a known model (roberta-large: 17), "
            "needed for a model folder."
        ),
    )

    def __post_init__(self) -> None:
        names = resolve_names(self.dataset)
        if self.eval_mode == "loglik" and (free := [n for n in names if not get_dataset(n).has_options]):
            raise UserError(
                f"--eval_mode loglik scores answer options; {', '.join(free)} ha{'s' if len(free) == 1 else 've'} "
                "none (math and dialogue are scored by generation)"
            )
        if self.protocol is not None and self.eval_mode == "generate" and len(names) == 1:
            spec = get_dataset(names[0])  # with several, one the protocol cannot score is reported and skipped
            get_protocol(self.protocol, spec.task).scorer(spec.name, spec.answer_kind)
        check_tracker(self.report_to)
        parse_pins(self.hub_revisions)
        if self.eval_mode not in EVAL_MODES:
            raise UserError(f"--eval_mode must be one of {', '.join(EVAL_MODES)}, got {self.eval_mode!r}")
        if (self.ckpt is None) == (self.model_name is None):
            raise UserError("give exactly one of --ckpt (a trained checkpoint) or --model_name (zero-shot)")
        if str(self.batch) != "auto" and not (str(self.batch).isdigit() and int(self.batch) > 0):
            raise UserError(f"--batch must be auto or a positive number of questions, got {self.batch!r}")
        require_positive(
            beam_size=self.beam_size,
            max_new_tokens=self.max_new_tokens,
            max_eval_samples=self.max_eval_samples,
            bert_score_layers=self.bert_score_layers,
        )
        if self.ckpt is None and self.output_dir is None:
            raise UserError("zero-shot evaluation (--model_name) needs --output_dir")

    def with_protocol(self, name: str) -> EvalConfig:
        """This configuration with the protocol fixed: the checkpoint's, unless --protocol was given."""
        return dataclasses.replace(self, protocol=get_protocol(self.protocol or name).name)

    def with_decoding(self, protocol: Protocol) -> EvalConfig:
        """The decoding settings left unset taken from the protocol's variant for a dataset's task (hira: 16 new
        tokens for commonsense, 200 for math, 32 for dialogue)."""
        unset = {k: v for k, v in protocol.eval_defaults.items() if getattr(self, k) is None}
        return dataclasses.replace(self, protocol=protocol.name, **unset)
