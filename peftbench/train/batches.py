"""How a step's sequences are laid out in its micro-batches, after the Trainer has drawn and counted them.

A step is ``grad_acc`` consecutive micro-batches of the seeded sampler's permutation, and its gradient is the
step's summed token loss over its label-token count (see ``plan``), so the step's sequences can be laid out
anew in the same number of micro-batches:

- regrouped by length (same number of micro-batches, same sizes), so each micro-batch pads only to its own
  longest sequence;
- or, where the model keeps them apart (``loss.keeps_packed_sequences_apart``), packed: the step's sequences
  share rows, each with positions from 0 and attending only to itself (transformers builds that mask from
  position ids that restart), in the same number of micro-batches. On the local commonsense mix (SmolLM2
  tokenizer, hira prompts, 256 sequences a step) regrouping leaves 7% of the executed tokens padding at
  micro-batch 8, 22% at 64 and 54% at 256; packing 1%, 3% and 8%.
"""

from __future__ import annotations

import torch

from peftbench.data.prompts import IGNORE_INDEX

PAD_MULTIPLE = 8  # training batches are padded to a multiple of this many tokens
ROW_WIDTH_FACTOR = 2  # a packed row holds up to this many times the step's longest sequence

# The value each padded training column takes where a sequence has ended. A padding position of a packed row
# restarts at 0, so each is a sequence of its own that no real token attends to.
PAD_VALUES = {"attention_mask": 0, "labels": IGNORE_INDEX, "position_ids": 0}

Batch = dict[str, torch.Tensor]


def regroup_by_length(batches: list[Batch], pad_token_id: int, multiple: int = PAD_MULTIPLE) -> list[Batch]:
    """The step's sequences in the same number of micro-batches of the same sizes, longest first, each padded
    to its own longest (rounded up to ``multiple``). The set of sequences and their tokens are unchanged."""
    rows = _sequences(batches)
    grouped, start = [], 0
    for batch in batches:
        size = len(batch["input_ids"])
        grouped.append(_pad_rows(rows[start : start + size], pad_token_id, multiple))
        start += size
    return grouped


def pack_step(batches: list[Batch], pad_token_id: int, multiple: int = PAD_MULTIPLE) -> list[Batch]:
    """The step's sequences packed into rows of up to twice its longest (first fit, longest first), spread over
    the same number of micro-batches, fullest rows first: ``input_ids``, ``labels`` and ``position_ids``, no
    attention mask. Each sequence's positions start at 0 and its first label is ignored, as the previous
    sequence's last token must not learn to predict it; padding never used that label either, so the loss
    sums the same token losses over the same count.

    Regrouped instead when there are fewer rows than micro-batches, or when a packed micro-batch would hold
    more tokens than regrouping's largest (its first, the longest sequences): the memory plan covers that one."""
    sequences = _sequences(batches)
    longest = len(sequences[0]["input_ids"])
    # Rows of only the longest leave medium sequences alone in theirs: on the local commonsense mix 7% of
    # executed tokens stay padding at micro-batch 64 and 16% at 256; at twice the longest, 3% and 8%. Attention
    # costs more per token in a longer row (2% of GPT-Neo-1.3B's FLOPs at 256 tokens, 4% at 512).
    rows = _first_fit(sequences, ROW_WIDTH_FACTOR * longest)
    if len(rows) >= len(batches):
        padded = _spread_rows([_packed_row(row) for row in rows], len(batches), pad_token_id, multiple)
        if max(part["input_ids"].numel() for part in padded) <= len(batches[0]["input_ids"]) * round_up(
            longest, multiple
        ):
            return padded
    return regroup_by_length(batches, pad_token_id, multiple)


def real_tokens(batches: list[Batch]) -> int:
    return sum(int(batch["attention_mask"].sum()) for batch in batches)


def executed_tokens(batches: list[Batch]) -> int:
    return sum(batch["input_ids"].numel() for batch in batches)


def round_up(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def _sequences(batches: list[Batch]) -> list[Batch]:
    """The step's sequences without their padding, longest first."""
    unknown = set(batches[0]) - {"input_ids", "attention_mask", "labels"}
    if unknown:
        raise ValueError(f"cannot regroup training batches holding {sorted(unknown)}")
    rows = []
    for batch in batches:
        for index, kept in enumerate(batch["attention_mask"].bool()):
            rows.append({key: values[index][kept] for key, values in batch.items()})
    return sorted(rows, key=lambda row: len(row["input_ids"]), reverse=True)


def _first_fit(sequences: list[Batch], width: int) -> list[list[Batch]]:
    """Rows of sequences (given longest first), each sequence in the first row with room for it."""
    rows: list[list[Batch]] = []
    free: list[int] = []
    for sequence in sequences:
        length = len(sequence["input_ids"])
        row = next((index for index, space in enumerate(free) if space >= length), None)
        if row is None:
            rows.append([])
            free.append(width)
            row = len(rows) - 1
        rows[row].append(sequence)
        free[row] -= length
    return rows


def _spread_rows(rows: list[Batch], micro_batches: int, pad_token_id: int, multiple: int) -> list[Batch]:
    """The packed rows over ``micro_batches`` padded micro-batches, fullest rows first, as evenly as they go."""
    packed = sorted(rows, key=lambda row: len(row["input_ids"]), reverse=True)
    counts = [len(packed) // micro_batches + (i < len(packed) % micro_batches) for i in range(micro_batches)]
    parts = [packed[sum(counts[:index]) : sum(counts[: index + 1])] for index in range(len(counts))]
    return [_pad_rows(part, pad_token_id, multiple) for part in parts]


def _packed_row(sequences: list[Batch]) -> Batch:
    labels = []
    for sequence in sequences:
        label = sequence["labels"].clone()
        label[0] = IGNORE_INDEX
        labels.append(label)
    return {
        "input_ids": torch.cat([sequence["input_ids"] for sequence in sequences]),
        "labels": torch.cat(labels),
        "position_ids": torch.cat([torch.arange(len(sequence["input_ids"])) for sequence in sequences]),
    }


def _pad_rows(rows: list[Batch], pad_token_id: int, multiple: int) -> Batch:
    width = round_up(len(rows[0]["input_ids"]), multiple)
    padded = {}
    for key in rows[0]:
        value = PAD_VALUES.get(key, pad_token_id)
        padded[key] = torch.stack(
            [torch.nn.functional.pad(row[key], (0, width - len(row[key])), value=value) for row in rows]
        )
    return padded
