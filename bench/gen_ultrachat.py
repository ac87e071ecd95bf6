"""Write an ultrachat_200k-shaped dataset of the real size, as parquet laid out like the hub repo.

    python bench/gen_ultrachat.py OUT_DIR [--scale 1.0] [--seed 0]

Real split sizes (train_sft 207,865, test_sft 23,110, train_gen 256,032, test_gen 28,304), multi-turn
conversations (1-4 exchanges, occasionally a system message), message lengths drawn to resemble
ultrachat's (user turns of a few sentences, assistant turns of several paragraphs). The text is random
words, so it compresses like prose rather than like repeated templates. Deterministic for a seed.
"""

from __future__ import annotations

import argparse
import hashlib
import random
from pathlib import Path

SPLITS = {"train_sft": 207_865, "test_sft": 23_110, "train_gen": 256_032, "test_gen": 28_304}
ROWS_PER_SHARD = 100_000
BATCH = 5_000


def _blob(rng: random.Random, size: int) -> str:
    syllables = ["ta", "ne", "ri", "lo", "mu", "sa", "ke", "vi", "do", "pa", "en", "or", "ul", "ith", "an"]
    words = sorted({"".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(20000)})
    parts, total = [], 0
    while total < size:
        sentence = " ".join(rng.choices(words, k=rng.randint(6, 24)))
        sentence = sentence[0].upper() + sentence[1:] + rng.choice([".", ".", ".", "?", "!"]) + " "
        parts.append(sentence)
        total += len(sentence)
    return "".join(parts)


def _text(rng: random.Random, blob: str, mean: int) -> str:
    length = max(8, int(rng.lognormvariate(0, 0.6) * mean))
    start = rng.randrange(0, len(blob) - length - 1)
    return blob[start : start + length].strip() or "Hello."


def _conversation(rng: random.Random, blob: str) -> dict:
    messages = []
    if rng.random() < 0.05:
        messages.append({"content": _text(rng, blob, 120), "role": "system"})
    for _ in range(rng.choice([1, 2, 3, 3, 4])):
        messages.append({"content": _text(rng, blob, 350), "role": "user"})
        messages.append({"content": _text(rng, blob, 1300), "role": "assistant"})
    prompt = next(m["content"] for m in messages if m["role"] == "user")
    return {"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(), "messages": messages}


def write(out_dir: Path, scale: float = 1.0, seed: int = 0) -> dict[str, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    blob = _blob(rng, 8_000_000)
    schema = pa.schema(
        [
            ("prompt", pa.string()),
            ("prompt_id", pa.string()),
            ("messages", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
        ]
    )
    data = out_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for split, full in SPLITS.items():
        rows = max(1, int(full * scale))
        sizes[split] = rows
        shards = (rows + ROWS_PER_SHARD - 1) // ROWS_PER_SHARD
        written = 0
        for shard in range(shards):
            path = data / f"{split}-{shard:05d}-of-{shards:05d}.parquet"
            n = min(ROWS_PER_SHARD, rows - written)
            with pq.ParquetWriter(path, schema, compression="snappy") as writer:
                for start in range(0, n, BATCH):
                    batch = [_conversation(rng, blob) for _ in range(min(BATCH, n - start))]
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            written += n
        print(f"{split}: {rows} conversations in {shards} file(s)", flush=True)
    card = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split in SPLITS:
        card += [f"  - split: {split}", f"    path: data/{split}-*"]
    (out_dir / "README.md").write_text(
        "\n".join([*card, "---", "", "Synthetic ultrachat_200k-shaped data.", ""])
    )
    return sizes


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write(args.out_dir, args.scale, args.seed)
