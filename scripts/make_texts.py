"""A synthetic text classification set for `caravan demo --data`: seeded, so the same arguments
write the same rows (and the same bytes, hence the same CIDs).

Four topics, a few sentences per text, several providers; one provider (`forum-noisy`) writes texts
that are mostly random words with only a trace of their topic, the text counterpart of the digits'
noisy scanner. The true topic is in the `label` column (the demo's --truth-col).

    .venv/bin/python scripts/make_texts.py texts.csv --rows 2000
    caravan demo --data texts.csv --kind text --field text --choices sport,science,cooking,travel \\
        --truth-col label
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

TOPICS = {
    "sport": {
        "who": ["the striker", "the coach", "the goalkeeper", "the captain", "the young sprinter",
                "the team"],
        "did": ["scored in the final minute", "trained through the winter", "won the league title",
                "missed a penalty", "broke the national record", "signed a new contract"],
        "where": ["at the stadium", "on the home pitch", "during the cup match", "in the relay race",
                  "before a loud crowd", "after extra time"],
    },
    "science": {
        "who": ["the researchers", "the chemist", "a physics lab", "the astronomer", "the biologist",
                "a team of engineers"],
        "did": ["measured the particle decay", "published a new study", "sequenced the genome",
                "observed a distant galaxy", "tested the vaccine in mice", "built a quantum sensor"],
        "where": ["in the laboratory", "with a new telescope", "under the microscope", "at the institute",
                  "using the collider data", "in a peer reviewed journal"],
    },
    "cooking": {
        "who": ["the chef", "my grandmother", "the baker", "the home cook", "the pastry team",
                "a food critic"],
        "did": ["simmered the tomato sauce", "kneaded the bread dough", "roasted the garlic",
                "whisked the eggs and butter", "seasoned the soup with thyme", "baked a lemon tart"],
        "where": ["in the kitchen", "over a low flame", "in a cast iron pan", "for the dinner party",
                  "with fresh basil", "in the wood oven"],
    },
    "travel": {
        "who": ["the travellers", "a backpacker", "the tour guide", "our family", "the pilot",
                "two hikers"],
        "did": ["boarded the night train", "booked a hostel by the sea", "crossed the mountain pass",
                "lost their luggage", "explored the old harbour", "took the ferry to the island"],
        "where": ["on the coast", "across the border", "at the airport", "in the old town",
                  "near the volcano", "during the long holiday"],
    },
}
FILLER = ["today", "again", "finally", "quietly", "as expected", "last week", "this morning", "once more"]
PROVIDERS = ("newsroom-a", "newsroom-b", "blog-c", "archive-d", "forum-noisy")
NOISY = {"forum-noisy": 0.85}  # share of each noisy text's words drawn at random
LABEL = "label"


def sentence(rng: random.Random, topic: str) -> str:
    parts = TOPICS[topic]
    words = [rng.choice(parts["who"]), rng.choice(parts["did"]), rng.choice(parts["where"])]
    if rng.random() < 0.5:
        words.append(rng.choice(FILLER))
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def scrambled(rng: random.Random, text: str, share: float, vocabulary: list[str]) -> str:
    """`text` with `share` of its words replaced by random ones from every topic."""
    words = [rng.choice(vocabulary) if rng.random() < share else w for w in text.split()]
    return " ".join(words)


def make_texts(rows: int = 2000, seed: int = 0) -> pa.Table:
    """`rows` texts (2-4 sentences each) with `provider`, `text` and the true `label`; distinct texts."""
    rng = random.Random(seed)
    topics = sorted(TOPICS)
    vocabulary = sorted({w for t in TOPICS.values() for ps in t.values() for p in ps for w in p.split()})
    seen: set[str] = set()
    out = {"provider": [], "text": [], LABEL: []}
    while len(out["text"]) < rows:
        i = len(out["text"])
        provider, topic = PROVIDERS[i % len(PROVIDERS)], rng.choice(topics)
        text = " ".join(sentence(rng, topic) for _ in range(rng.randint(2, 4)))
        if provider in NOISY:
            text = scrambled(rng, text, NOISY[provider], vocabulary)
        if text in seen:
            continue  # an exact copy would be dropped at ingest; keep the row count exact
        seen.add(text)
        out["provider"].append(provider)
        out["text"].append(text)
        out[LABEL].append(topic)
    return pa.table({k: pa.array(v, pa.string()) for k, v in out.items()})


def write(table: pa.Table, path: Path) -> None:
    if path.suffix.lower() == ".parquet":
        pq.write_table(table, path)
    elif path.suffix.lower() == ".csv":
        pa_csv.write_csv(table, path)
    else:
        raise SystemExit(f"{path}: write .csv or .parquet")


def main(make=make_texts, rows: int = 2000, doc: str = __doc__) -> None:
    """The command line of a seeded generator `make(rows, seed)` (this one's, or `make_table.py`'s)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the .csv or .parquet file to write")
    parser.add_argument("--rows", type=int, default=rows)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.rows < 1:
        raise SystemExit("--rows must be at least 1")
    write(make(args.rows, args.seed), args.out)
    print(args.out)


if __name__ == "__main__":
    main()
