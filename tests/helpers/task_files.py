"""Small math and dialogue data in their publishers' own schemas, written where a test asks.

MetaMathQA and ConvAI2 are not in shared/data: these files have the real layouts (the hub's
``MetaMathQA/MetaMathQA-395K.json``; ParlAI's ``convai2/*_self_original.txt``) with made-up content.
"""

from __future__ import annotations

import json
from pathlib import Path


def write_metamath(root: Path, count: int = 48) -> Path:
    """``root/MetaMathQA/MetaMathQA-395K.json``: records of MetaMathQA's schema, each response ending in its
    'The answer is: N'; returns root (a --data_dir)."""
    records = []
    for i in range(count):
        a, b = 3 + i, 7 + 2 * i
        records.append({
            "query": f"Tom has {a} apples and buys {b} more. How many apples does Tom have now?",
            "response": f"Tom starts with {a} apples.\nHe buys {b} more, so he has {a} + {b} = {a + b} apples.\n"
                        f"The answer is: {a + b}",
            "type": "GSM_Rephrased" if i % 2 else "GSM_AnsAug",
            "original_question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
        })  # fmt: skip
    folder = root / "MetaMathQA"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MetaMathQA-395K.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    return root


PERSONAS = (
    ("i like to remodel homes .", "i like to go hunting .", "my favorite holiday is halloween ."),
    ("i have two dogs .", "i work as a nurse .", "i love pizza ."),
    ("i play the guitar .", "i live in a big city .", "my father was a pilot ."),
)
TURNS = (
    ("hi , how are you doing today ?", "i am doing well , just got back from hunting ."),
    ("what do you do for a living ?", "i remodel homes , it is a lot of work ."),
    ("do you have any pets ?", "no pets , but i would like a dog ."),
    ("that sounds fun . any plans for the weekend ?", "i will carve pumpkins for halloween ."),
)


def parlai_episode(persona: tuple[str, ...], turns: tuple[tuple[str, str], ...], candidates: bool = True) -> list[str]:
    """One episode as ParlAI numbers its lines: persona lines, then 'partner<TAB>reply<TAB><TAB>candidates'."""
    lines = [f"your persona: {sentence}" for sentence in persona]
    for partner, reply in turns:
        tail = "\t\tno thanks .|" + reply if candidates else ""
        lines.append(f"{partner}\t{reply}{tail}")
    return [f"{number} {line}" for number, line in enumerate(lines, start=1)]


def write_convai2(root: Path, episodes: int = 3, train_episodes: int = 12) -> Path:
    """``root/convai2/{train,valid}_self_original.txt`` in ParlAI's format; returns root (a --data_dir)."""
    folder = root / "convai2"
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("valid_self_original.txt", episodes), ("train_self_original.txt", train_episodes)):
        lines = []
        for i in range(count):
            turns = TURNS[: 2 + i % 3]
            lines += parlai_episode(PERSONAS[i % len(PERSONAS)], turns)
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root
