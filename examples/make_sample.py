"""Writes examples/sample.parquet: the bundled sample corpus for the quickstart.

A few hundred documents: hand-written news snippets (names from many cultures, odd
unicode, CJK, emoji, control characters, a null and an empty text), short and multi-
paragraph stories from the project's own topic templates, and a few long reports.
Deterministic: `python examples/make_sample.py` rewrites the same file.
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.demo.corpus import TOPIC_TEMPLATES, Fillers, topic_examples

HAND_WRITTEN = [
    ("Angela Merkel met Tim Cook in Berlin to discuss investment in German factories.", "wire"),
    ("Lionel Messi scored twice as Inter Miami beat Orlando City 3-1 on Saturday night.", "wire"),
    ("Shares of Siemens rose 4% in Frankfurt after the company raised its full-year outlook.", "wire"),
    (
        "Researchers at ETH Zürich unveiled a solar cell that keeps 90% of its efficiency after ten years.",
        "blog",
    ),
    ("Ngozi Okonjo-Iweala warned in Geneva that trade tensions could slow global growth.", "wire"),
    ("Naomi Osaka withdrew from the tournament in Melbourne with a wrist injury.", "wire"),
    ("Toyota and Panasonic will build a battery plant near Ōsaka, the companies said on Monday.", "wire"),
    ("President Cyril Ramaphosa arrived in Nairobi for talks with Kenyan leaders.", "wire"),
    ("The İstanbul stock exchange fell 2.3 per cent; the lira weakened against the euro.", "wire"),
    ("Café owners in Montréal say the ﬁnal week of the festival brought record crowds.", "local"),
    ("São Paulo's mayor announced free buses on Sundays. 👍🏽 Riders cheered the decision.", "social"),
    ("东京 and 北京 signed a cultural exchange deal; Yuki Tanaka led the Japanese delegation.", "wire"),
    ("Björn Müller-Lüdenscheidt, CEO of Nordlicht Energy, resigned after the audit.", "wire"),
    (
        "Breaking:\r\nFloods hit Jakarta overnight.\r\nOfficials urged residents to move to higher ground.",
        "wire",
    ),
    ("Priya Raman joined Nvidia as head of research in Bangalore.", "blog"),
    ("NASA confirmed the launch window; astronauts will fly to the station in March.", "blog"),
    ("The match between Real Madrid and Bayern Munich ended 2-2 after a late penalty.", "wire"),
    ("Olaf Scholz and Emmanuel Macron met in Brussels ahead of the summit.", "wire"),
    ("Spotify cut 1,500 jobs, citing slower growth; its shares jumped in New York trading.", "wire"),
    ("Chinedu Okafor, a nurse from Lagos, won the national poetry prize.", "local"),
    ("Family trip 👨‍👩‍👧‍👦 to Reykjavík was great — the northern lights were unreal!", "social"),
    ("Ctrl\x07chars\x1b[0m sometimes\u200b sneak into scraped text from Kraków news sites.", "scrape"),
    ("ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ and ligatures like ﬀ and ﬃ appear in OCR output from Bogotá.", "ocr"),
    ("Cafe\u0301 culture in Paris is changing, says Hélène Dubois of the tourism office.", "blog"),
    ("Greta Thunberg spoke to students in Stockholm about the climate strike.", "wire"),
    ("Amazon opened a logistics hub outside Warsaw, creating 3,000 jobs.", "wire"),
    ("The Champions League final will be played in Lisbon next May.", "wire"),
    ("Samsung unveiled a foldable phone with a faster chip and a brighter screen.", "blog"),
    ("Mary Barra said General Motors would double its battery output by 2028.", "wire"),
    ("Aid agencies called for a ceasefire as fighting spread near the border with Chad.", "wire"),
    ("   ", "scrape"),
    ("", "scrape"),
    (None, "scrape"),
]


SAMPLE = Path(__file__).with_name("sample.parquet")


def main(path: Path = SAMPLE) -> None:
    rng = random.Random(2026)
    fillers = Fillers(seed=2026, per_locale=30)
    texts: list[str | None] = [t for t, _ in HAND_WRITTEN]
    sources = [s for _, s in HAND_WRITTEN]
    for doc, _ in topic_examples(TOPIC_TEMPLATES, 240, fillers):
        texts.append(doc.text)
        sources.append("generated")
    for _ in range(12):  # long reports: several hundred to a few thousand words, many NER windows
        docs = topic_examples(TOPIC_TEMPLATES, rng.randint(40, 250), fillers)
        paragraphs = [" ".join(d.text for d, _ in docs[i : i + 5]) for i in range(0, len(docs), 5)]
        texts.append("\n\n".join(paragraphs))
        sources.append("report")
    order = list(range(len(texts)))
    rng.shuffle(order)
    table = pa.table(
        {
            "id": pa.array(range(1, len(order) + 1), pa.int64()),
            "text": pa.array([texts[i] for i in order], pa.string()),
            "source": pa.array([sources[i] for i in order], pa.string()),
        }
    )
    pq.write_table(table, path, compression="zstd")
    print(f"wrote {table.num_rows} documents to {path}")


if __name__ == "__main__":
    main()
