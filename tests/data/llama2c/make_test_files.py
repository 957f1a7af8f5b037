#!/usr/bin/env python3
"""Writes the small llama2.c test inputs of the project (deterministic; rerun to reproduce):

  tests/data/llama2c/tiny_l2h2.bin          version 0 checkpoint, random weights: dim 8, hidden 16,
                                            2 layers, 2 heads, 1 KV head, vocab 8, context 32
  tests/fuzz/corpus_checkpoint/tiny_*.bin   tiny models in the layouts of llama2.c export.py
                                            (legacy_export, version1_export, version2_export with
                                            its Q8_0 quantisation), shared and separate classifier,
                                            plus corrupted and short inputs
  tests/fuzz/corpus_tokenizer/*             seeds of fuzz_tokenizer.cpp: tokenizer files (first
                                            byte even) and random-vocabulary descriptions (odd)

This is a second, independent reading of export.py's layouts (the C++ one is
examples/llama2c/checkpoint.hpp); tests/test_llama2c_checkpoint.cpp checks that both agree.
The handed inputs (min_model.bin, min_tok.bin, v1/v2_header_only.bin) are copied, not made here.
Usage: python3 tests/data/llama2c/make_test_files.py   (from the repository root)
"""
import math
import os
import random
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
DATA = os.path.join(ROOT, "tests", "data", "llama2c")
CKPT = os.path.join(ROOT, "tests", "fuzz", "corpus_checkpoint")
TOK = os.path.join(ROOT, "tests", "fuzz", "corpus_tokenizer")

LAYER_TENSORS_V0 = ["rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3"]
MATRICES = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]


def f32(values):
    return struct.pack("<%df" % len(values), *values)


def model(dim, hidden, layers, heads, kv_heads, vocab, seq_len, shared, seed, scale=0.5):
    rnd = random.Random(seed)
    head_dim = dim // heads
    kv_dim = head_dim * kv_heads

    def vec(n, offset=0.0):
        return [offset + rnd.uniform(-scale, scale) for _ in range(n)]

    w = {
        "emb": vec(vocab * dim),
        "rms_att": [vec(dim, 1.0) for _ in range(layers)],
        "rms_ffn": [vec(dim, 1.0) for _ in range(layers)],
        "wq": [vec(dim * dim) for _ in range(layers)],
        "wk": [vec(kv_dim * dim) for _ in range(layers)],
        "wv": [vec(kv_dim * dim) for _ in range(layers)],
        "wo": [vec(dim * dim) for _ in range(layers)],
        "w1": [vec(hidden * dim) for _ in range(layers)],
        "w2": [vec(dim * hidden) for _ in range(layers)],
        "w3": [vec(hidden * dim) for _ in range(layers)],
        "rms_final": vec(dim, 1.0),
        "wcls": None if shared else vec(vocab * dim),
    }
    cfg = dict(dim=dim, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
               vocab=vocab, seq_len=seq_len, shared=shared, head_dim=head_dim)
    return cfg, w


def fields(c, negative_vocab):
    vocab = -c["vocab"] if negative_vocab else c["vocab"]
    return struct.pack("<7i", c["dim"], c["hidden"], c["layers"], c["heads"], c["kv_heads"],
                       vocab, c["seq_len"])


def legacy(c, w):  # export.py legacy_export
    b = fields(c, not c["shared"]) + f32(w["emb"])
    for name in LAYER_TENSORS_V0:
        for layer in w[name]:
            b += f32(layer)
    b += f32(w["rms_final"])
    hd = c["head_dim"]
    freqs = [1.0 / 10000 ** (2 * i / hd) for i in range(hd // 2)]
    b += f32([math.cos(p * f) for p in range(c["seq_len"]) for f in freqs])
    b += f32([math.sin(p * f) for p in range(c["seq_len"]) for f in freqs])
    if w["wcls"] is not None:
        b += f32(w["wcls"])
    return b


def header(c, version, group_size=None):
    b = struct.pack("<Ii", 0x616B3432, version) + fields(c, False)
    b += struct.pack("<B", 1 if c["shared"] else 0)
    if version == 2:
        b += struct.pack("<i", group_size)
    return b + b"\0" * (256 - len(b))


def version1(c, w):  # export.py version1_export
    b = header(c, 1)
    for name in ["rms_att", "rms_ffn"]:
        for layer in w[name]:
            b += f32(layer)
    b += f32(w["rms_final"]) + f32(w["emb"])
    for name in MATRICES:
        for layer in w[name]:
            b += f32(layer)
    if w["wcls"] is not None:
        b += f32(w["wcls"])
    return b


def q80(x, gs):  # export.py quantize_q80, then int8 values and float32 scales
    q, scales = [], []
    for g in range(len(x) // gs):
        group = [struct.unpack("<f", struct.pack("<f", v))[0] for v in x[g * gs:(g + 1) * gs]]
        scale = max(abs(v) for v in group) / 127.0
        scales.append(scale)
        q += [round(v / scale) if scale > 0 else 0 for v in group]  # round half to even
    return struct.pack("<%db" % len(q), *q) + f32(scales)


def version2(c, w, gs):  # export.py version2_export
    b = header(c, 2, gs)
    for name in ["rms_att", "rms_ffn"]:
        for layer in w[name]:
            b += f32(layer)
    b += f32(w["rms_final"]) + q80(w["emb"], gs)
    for name in MATRICES:
        for layer in w[name]:
            b += q80(layer, gs)
    if w["wcls"] is not None:
        b += q80(w["wcls"], gs)
    return b


def tokenizer_file(pieces, scores=None):
    b = struct.pack("<i", max(1, max(len(p) for p in pieces)))
    for i, p in enumerate(pieces):
        b += struct.pack("<fi", float(i) if scores is None else scores[i], len(p)) + p
    return b


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def main():
    os.makedirs(CKPT, exist_ok=True)
    os.makedirs(TOK, exist_ok=True)
    c, w = model(8, 16, 2, 2, 1, 8, 32, True, seed=2024)
    write(os.path.join(DATA, "tiny_l2h2.bin"), legacy(c, w))

    for shared in (True, False):
        c, w = model(4, 4, 1, 2, 1, 4, 4, shared, seed=3 if shared else 4)
        kind = "shared" if shared else "unshared"
        write(os.path.join(CKPT, "tiny_v0_%s.bin" % kind), legacy(c, w))
        write(os.path.join(CKPT, "tiny_v1_%s.bin" % kind), version1(c, w))
        write(os.path.join(CKPT, "tiny_v2_%s.bin" % kind), version2(c, w, 4))
    c, w = model(4, 6, 2, 2, 2, 5, 3, True, seed=5)
    write(os.path.join(CKPT, "tiny_v2_gs2_2layers.bin"), version2(c, w, 2))
    write(os.path.join(CKPT, "tiny_v1_2layers.bin"), version1(c, w))
    bad = bytearray(legacy(c, w))
    bad[-4:] = b"\x7f\xc0\xff\xff"  # a NaN as the last weight
    write(os.path.join(CKPT, "bad_v0_nan_last.bin"), bytes(bad))
    write(os.path.join(CKPT, "bad_version3.bin"), header(c, 3))
    write(os.path.join(CKPT, "bad_short.bin"), b"24ka\x01\x00")
    write(os.path.join(CKPT, "bad_empty.bin"), b"")

    control = [b"<unk>", b"\n<s>\n", b"\n</s>\n"]
    with open(os.path.join(DATA, "min_tok.bin"), "rb") as f:
        write(os.path.join(TOK, "file_min_tok"), b"\x00" + f.read())
    raw = [bytes([b]) if b < 0x80 else chr(b).encode("utf-8") for b in range(256)]
    old = control + raw + [b" ", b"H", b"i", b",", b"y", b"o", b"u", b".", b" H", b" Hi", b" y",
                           b" yo", b" you"]
    write(os.path.join(TOK, "file_old_export_duplicates"), b"\x02" + tokenizer_file(old))
    hexp = control + [b" ", b"a", b"b", b" a"] + [b"<0x%02X>" % b for b in range(256)] + [b"ab"]
    write(os.path.join(TOK, "file_hex_bytes_late"), b"\x04" + tokenizer_file(hexp))
    write(os.path.join(TOK, "file_truncated"), b"\x06" + tokenizer_file(control + [b" ", b"x"])[:-1])
    rnd = random.Random(3)
    cases = [(0, b"abc, a.b"), (1, b"a\xc3\xa9b c"), (2, b"cab ba, x<0>"), (9, b"\xc3\xa9\xc3\xa9 abc"),
             (1, b"\xff\x80 aaaa bbbb")]
    for k, (flags, text) in enumerate(cases):
        body = bytes([flags, 20, 5])  # flags, regular pieces (1 + 20), position of byte pieces
        for _ in range(21):
            n = rnd.randrange(4)
            body += bytes([n]) + bytes(rnd.randrange(12) for _ in range(n + 1))
            body += bytes([rnd.randrange(256)])
        write(os.path.join(TOK, "vocab_%d" % k), b"\x01" + body + text)


if __name__ == "__main__":
    main()
