"""A reproducible corpus with a realistic document-length mix, written to Parquet."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

COMMON = (
    "the of and to in a is that for on was with as by at from it be this are which or have an has "
    "said will year new after more than been were its about market team government company city "
    "people first two last week match season report growth shares research data study officials"
).split()
NAMES = (
    "Angela Merkel Tim Cook Lionel Messi Serena Williams Narendra Modi Ngozi Okonjo-Iweala "
    "Siemens Apple Toyota Reuters Berlin Paris Tokyo Lagos São Paulo Zürich München Ōsaka "
    "Microsoft Google FIFA NASA Brussels Nairobi Jakarta"
).split()
ODD = ["café", "naïve", "ﬁnal", "İstanbul", "👍🏽", "東京", "—", "(AP)", "U.S.", "3.5%", "$12bn"]

MIXES = {
    # median ~80 words, a long tail past 2,000 words
    "default": (math.log(80), 1.1, 5000),
    "short": (math.log(20), 0.6, 200),
    "long": (math.log(400), 0.8, 8000),
}


def generate(n_docs: int, seed: int = 0, mix: str = "default") -> list[str]:
    rng = np.random.default_rng(seed)
    mu, sigma, cap = MIXES[mix]
    lengths = np.clip(rng.lognormal(mu, sigma, n_docs).astype(int), 1, cap)
    vocab = np.array(COMMON * 6 + NAMES * 2 + ODD)
    docs = []
    for n in lengths:
        words = rng.choice(vocab, size=int(n))
        docs.append(" ".join(words.tolist()).capitalize() + ".")
    return docs


def write_parquet(path: Path, n_docs: int, seed: int = 0, mix: str = "default", files: int = 1) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = generate(n_docs, seed, mix)
    path.mkdir(parents=True, exist_ok=True)
    per = math.ceil(n_docs / files)
    for f in range(files):
        lo, hi = f * per, min(n_docs, (f + 1) * per)
        table = pa.table({"id": pa.array(range(lo, hi), pa.int64()), "text": texts[lo:hi]})
        pq.write_table(table, path / f"part-{f:04d}.parquet")
    return path
