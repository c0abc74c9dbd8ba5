"""Hostile inputs, generated: texts that have broken tokenizers, offset arithmetic and JSON
handling elsewhere, and request bodies that are random or mutated from a valid one."""

from __future__ import annotations

import json
import random
from typing import Any

import pyarrow as pa

INVALID_UTF8 = [b"bad \xed\xa0\x80 lone surrogate", b"\xff\xfe\xfd", b"ends mid-char \xe2\x82"]


def hostile_texts(rng: random.Random, big_chars: int = 5_000_000) -> dict[str, str]:
    """{what: text}; every one is a valid Python str that Arrow can hold."""
    words = "Angela Merkel met Tim Cook in Berlin Siemens Apple Munich".split()
    return {
        "control": "".join(chr(i) for i in range(32)) + "\x7f" + "".join(chr(i) for i in range(0x80, 0xA0)),
        "control_words": "Angela\x00Merkel\x07met\x1bTim\x0cCook\x85in\x1fBerlin",
        "zero_width": "An\u200bge\u200cla\u200d Mer\u2060kel\ufeff met \u200bTim Cook",
        "bidi": "\u202eAngela Merkel\u202c met \u2067Tim Cook\u2069 in \u200fBerlin\u200e \u202dok",
        "big": " ".join(rng.choice(words) for _ in range(big_chars // 6))[:big_chars],
        "emoji": "😀" * 10_000,
        "emoji_zwj": "👨‍👩‍👧‍👦🏳️‍🌈🇫🇷👍🏽" * 1_000,
        "html": '<script>alert("x")</script><div class="a">Angela &amp; Merkel</div><!-- c --><br/>'
        "<a href='javascript:void(0)'>Tim Cook</a>&#x202e;&lt;&gt;<![CDATA[Berlin]]>",
        "markdown": "# Title\n\n**Angela Merkel** met _Tim Cook_ in [Berlin](http://x).\n```\ncode\n```",
        "whitespace": " \t\n\r\x0b\x0c\u00a0\u1680\u2000\u2003\u2028\u2029\u202f\u205f\u3000" * 50,
        "punctuation": "!?.,;:-—–…'\"()[]{}<>/\\|@#$%^&*_+=~`" * 40,
        "mixed_scripts": "Hello Привет مرحبا שלום 你好 こんにちは 안녕하세요 नमस्ते Γειά ሰላም ᚠᛇᚻ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
        "zalgo": "A" + "\u0301\u0316\u0334" * 2_000 + " Merkel",
        "nul_only": "\x00" * 500,
        "one_long_token": "x" * 200_000,
        "private_use": "\ue000\uf8ff\U000f0000\U0010fffd Berlin",
        "noncharacters": "\ufffe\uffff\U0001fffe Tim Cook \ufffd",
    }


def invalid_utf8_column(texts: list[str], bad: list[bytes]) -> pa.Array:
    """A string column whose last cells are not UTF-8 (as a non-validating writer leaves them)."""
    values = [t.encode() for t in texts] + bad
    offsets = [0]
    for v in values:
        offsets.append(offsets[-1] + len(v))
    return pa.Array.from_buffers(
        pa.large_string(),
        len(values),
        [None, pa.array(offsets, pa.int64()).buffers()[1], pa.py_buffer(b"".join(values))],
    )


def fuzz_bodies(rng: random.Random, n: int) -> list[bytes]:
    """Random and mutated request bodies for the annotate routes."""
    valid: dict[str, Any] = {"texts": ["Angela Merkel met Tim Cook in Berlin."], "models": ["classifier"]}
    out = []
    for _ in range(n):
        pick = rng.randrange(12)
        if pick == 0:  # random bytes
            out.append(rng.randbytes(rng.randrange(0, 300)))
        elif pick == 1:  # any JSON value
            out.append(json.dumps(_value(rng, 3)).encode())
        elif pick == 2:  # deep nesting
            depth = rng.choice([100, 1_000, 10_000, 100_000])
            out.append(b'{"texts": ' + b"[" * depth + b"]" * depth + b"}")
        elif pick == 3:  # escapes of lone surrogates and odd code points
            junk = rng.choice(["\\ud800", "\\udfff", "\\ud83d", "\\u0000", "\\uffff", "\\ud800\\ud800x"])
            out.append(f'{{"texts": ["Angela {junk} Merkel met Tim Cook", "{junk}"]}}'.encode())
        elif pick == 4:  # invalid UTF-8 inside a string
            out.append(b'{"texts": ["Angela ' + rng.choice(INVALID_UTF8) + b' Merkel"]}')
        elif pick == 5:  # NaN, Infinity, huge numbers
            out.append(
                rng.choice(
                    [
                        b'{"texts": [NaN]}',
                        b'{"texts": Infinity}',
                        b'{"texts": [1e999]}',
                        b'{"texts": ["a"], "models": [-1e308]}',
                        b'{"texts": [' + b"9" * 5000 + b"]}",
                    ]
                )
            )
        elif pick == 6:  # truncated valid body
            body = json.dumps(valid).encode()
            out.append(body[: rng.randrange(len(body))])
        else:  # a valid body with one field mutated
            body = json.loads(json.dumps(valid))
            key = rng.choice(["texts", "models", "extra"])
            body[key] = _value(rng, 2) if rng.random() < 0.5 else _texts(rng)
            if rng.random() < 0.2:
                body.pop(rng.choice(["texts", "models"]), None)
            out.append(json.dumps(body, ensure_ascii=rng.random() < 0.5).encode())
    return out


def _texts(rng: random.Random) -> list[Any]:
    pool = list(hostile_texts(rng, big_chars=1_000).values()) + [None, "", 3, ["nested"], {"a": 1}]
    return [rng.choice(pool) for _ in range(rng.randrange(0, 20))]


def _value(rng: random.Random, depth: int) -> Any:
    kinds = ["null", "bool", "int", "float", "str"] + (["list", "dict"] if depth else [])
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, -1, 2**31, -(2**63), 10**30, rng.randrange(-1000, 1000)])
    if kind == "float":
        return rng.choice([0.5, -1e300, 1e-300, 3.14])
    if kind == "str":
        points = (rng.randrange(1, 0x2FFFF) for _ in range(rng.randrange(0, 40)))
        return "".join(chr(p) for p in points if not 0xD800 <= p <= 0xDFFF)  # surrogates: see pick 3
    if kind == "list":
        return [_value(rng, depth - 1) for _ in range(rng.randrange(0, 6))]
    return {f"k{i}": _value(rng, depth - 1) for i in range(rng.randrange(0, 4))}
