"""Token shards: tokenize documents once into memory-mapped arrays, then read training windows from them.

``prepare_data`` turns sources (see ``sources.py``) into a directory::

    manifest.json          counts, dtype, tokenizer, the spec that made it, and a SHA-256 per shard
    train_000.bin …        flat uint16 tokens (uint32 when the vocabulary exceeds 65,536), <|endoftext|> after
    val_000.bin …          every document
    tokenizer/             the tokenizer that made the ids (char / trained BPE / GPT-2)

The split is by document and deterministic: a document goes to val when SHA-256(split_seed, document id) falls
below ``val_fraction`` — reordering or adding sources never moves an existing document between splits. The whole
directory is committed atomically (``checkpoint.atomic_directory``), so a killed ``prepare`` leaves nothing
half-written behind.

Reading: ``TokenData`` memory-maps the shards (nothing is loaded into RAM). ``WindowSampler`` serves
``block_size + 1`` token windows in an order that is a pure function of (seed, sample index): a permutation of
all non-overlapping windows per epoch. The trainer's data position is therefore just its step counter, which
makes resume exact and lets N DDP ranks split one global batch exactly as one process would.
Reference: nanoGPT ``data/openwebtext/prepare.py`` (uint16 memmap + EOT), nanochat, torchtitan's dataloader state.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from omnigpt.data.sources import Document, iter_documents
from omnigpt.files.atomic import atomic_directory, is_complete, sha256_file

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SPLITS = ("train", "val")


@dataclass
class DataSpec:
    """How to build a prepared data directory (the ``data:`` section of a training recipe)."""

    dir: str = "runs/data/default"  # where the prepared shards live (or will be written)
    sources: list[str] = field(default_factory=list)  # built-in corpus names, files, globs, *.jsonl
    tokenizer: str = "gpt2"  # "char" | "gpt2" | "bpe:VOCAB" (trained on the train split) | a tokenizer directory
    val_fraction: float = 0.1  # share of *documents* held out for validation
    split_seed: int = 0
    text_field: str = "text"  # the field read from JSON Lines sources
    shard_tokens: int = 1 << 27  # tokens per shard file (128 Mi tokens = 256 MiB as uint16)

    def fingerprint(self) -> dict[str, Any]:
        """What decides the content of the directory (everything except where it is)."""
        d = asdict(self)
        d.pop("dir")
        return d


def split_of(doc_id: str, val_fraction: float, seed: int) -> str:
    """'val' or 'train' from a hash of the id: stable across runs, machines and source order."""
    h = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return "val" if int.from_bytes(h[:8], "big") / 2**64 < val_fraction else "train"


def build_tokenizer(spec: DataSpec, train_docs: list[Document], all_docs: list[Document], progress: bool = True):
    """The tokenizer named by ``spec.tokenizer`` (imported lazily: only ``prepare`` needs to build one)."""
    from omnigpt.text import gpt2_vocab
    from omnigpt.text import tokenizer as tok

    name = spec.tokenizer
    if name == "char":
        # The character set comes from every document (train and val), as nanoGPT's shakespeare_char does, so
        # validation never meets an unknown character; no statistics of val leak beyond "this char exists".
        return tok.CharTokenizer.from_text("".join(d.text for d in all_docs), special_tokens=["<|endoftext|>"])
    if name == "gpt2":
        return gpt2_vocab.gpt2_tokenizer()
    if name.startswith("bpe:"):
        try:
            vocab = int(name.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"tokenizer {name!r}: expected bpe:VOCAB_SIZE, e.g. bpe:4096") from None
        with tempfile.TemporaryDirectory() as tmp:  # BPE trains on files; train split only (no val leakage)
            files = []
            for i, d in enumerate(train_docs):
                p = Path(tmp) / f"{i:06d}.txt"
                p.write_text(d.text, encoding="utf-8")
                files.append(str(p))
            return tok.BPETokenizer.train(files, vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                          show_progress=progress)
    if Path(name).is_dir():
        return tok.load_tokenizer(name)
    raise ValueError(f"unknown tokenizer {name!r}: use 'char', 'gpt2', 'bpe:VOCAB' or a saved tokenizer directory")


class _ShardWriter:
    """Appends token arrays to ``{split}_NNN.bin`` files, starting a new file every ``shard_tokens`` tokens."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._f = None
        self._n = 0

    def _open(self) -> None:
        name = f"{self.split}_{len(self.shards):03d}.bin"
        self._f = open(self.directory / name, "wb")  # noqa: SIM115 — closed in _close
        self.shards.append({"file": name, "tokens": 0})
        self._n = 0

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self._f is None or self._n >= self.shard_tokens:
                self._close()
                self._open()
            take = ids[: self.shard_tokens - self._n]
            self._f.write(take.astype(self.dtype, copy=False).tobytes())
            self._n += len(take)
            self.shards[-1]["tokens"] += len(take)
            ids = ids[len(take):]

    def _close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def finish(self) -> list[dict[str, Any]]:
        self._close()
        for s in self.shards:
            s["sha256"] = sha256_file(self.directory / s["file"])
        return self.shards


def prepare_data(spec: DataSpec, progress: bool = True) -> Path:
    """Tokenize ``spec.sources`` into shards under ``spec.dir`` (atomically). Returns the directory."""
    if not spec.sources:
        raise ValueError("no data sources given (built-in corpora: shakespeare, wikipedia; or files, globs, *.jsonl)")
    if not 0.0 < spec.val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {spec.val_fraction}")
    docs = [d for d in iter_documents(spec.sources, spec.text_field) if d.text]
    if len(docs) < 2:
        raise ValueError(f"need at least 2 non-empty documents for a train/val split, got {len(docs)}")
    ids = [d.id for d in docs]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate document ids (the same source listed twice?)")
    assign = {d.id: split_of(d.id, spec.val_fraction, spec.split_seed) for d in docs}
    for want in SPLITS:  # tiny corpora: make sure neither split is empty (move the doc with the lowest hash)
        if want not in assign.values():
            other = [d.id for d in docs if assign[d.id] != want]
            assign[min(other, key=lambda i: hashlib.sha256(f"{spec.split_seed}:{i}".encode()).digest())] = want
    train_docs = [d for d in docs if assign[d.id] == "train"]

    tokenizer = build_tokenizer(spec, train_docs, docs, progress)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no <|endoftext|> token to separate documents")
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)

    with atomic_directory(spec.dir) as tmp:
        writers = {s: _ShardWriter(tmp, s, dtype, spec.shard_tokens) for s in SPLITS}
        counts = {s: {"documents": 0, "tokens": 0, "bytes": 0} for s in SPLITS}
        for d in tqdm(docs, desc=f"tokenizing {len(docs)} documents", unit="doc",
                      disable=None if progress else True):  # None: no bar when stderr is not a terminal
            toks = np.asarray([*tokenizer.encode(d.text), eos], dtype=np.int64)  # <|endoftext|> after each doc
            s = assign[d.id]
            writers[s].write(toks)
            counts[s]["documents"] += 1
            counts[s]["tokens"] += len(toks)
            counts[s]["bytes"] += len(d.text.encode("utf-8"))  # for bits per byte
        (tmp / "tokenizer").mkdir()
        tokenizer.save(tmp / "tokenizer")
        manifest = {
            "format": FORMAT_VERSION,
            "dtype": dtype.name,
            "vocab_size": tokenizer.vocab_size,
            "eos_token_id": eos,
            "tokenizer": "tokenizer",
            "spec": spec.fingerprint(),
            "splits": {s: {**counts[s], "shards": writers[s].finish()} for s in SPLITS},
            "val_documents": sorted(i for i in ids if assign[i] == "val"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return Path(spec.dir)


# ------------------------------------------------------------------------------------------------------------
# Reading


class TokenData:
    """A prepared directory: manifest + memory-mapped shards per split (opened on first use)."""

    def __init__(self, directory: str | Path, verify: bool = False) -> None:
        self.dir = Path(directory)
        mf = self.dir / MANIFEST
        if not mf.is_file():
            raise FileNotFoundError(f"{self.dir}: no {MANIFEST} (prepare the data first: omnigpt prepare …)")
        if not is_complete(self.dir):
            raise ValueError(f"{self.dir}: data directory was not completely written (no COMPLETE marker)")
        self.manifest: dict[str, Any] = json.loads(mf.read_text())
        if self.manifest.get("format") != FORMAT_VERSION:
            raise ValueError(f"{self.dir}: unsupported data format {self.manifest.get('format')!r}")
        self.dtype = np.dtype(self.manifest["dtype"])
        self.vocab_size: int = self.manifest["vocab_size"]
        self.eos_token_id: int = self.manifest["eos_token_id"]
        for split in SPLITS:
            for s in self.manifest["splits"][split]["shards"]:
                path = self.dir / s["file"]
                if not path.is_file() or path.stat().st_size != s["tokens"] * self.dtype.itemsize:
                    raise ValueError(f"{path}: missing or wrong size for {s['tokens']} {self.dtype.name} tokens")
                if verify and sha256_file(path) != s["sha256"]:
                    raise ValueError(f"{path}: SHA-256 does not match {MANIFEST} (corrupted shard)")
        self._maps: dict[str, list[np.memmap]] = {}

    def shards(self, split: str) -> list[np.ndarray]:
        if split not in self._maps:
            self._maps[split] = [np.memmap(self.dir / s["file"], dtype=self.dtype, mode="r")
                                 for s in self.manifest["splits"][split]["shards"] if s["tokens"]]
        return self._maps[split]

    def count(self, split: str, what: str = "tokens") -> int:
        return int(self.manifest["splits"][split][what])

    def tokenizer(self):
        from omnigpt.text.tokenizer import load_tokenizer

        return load_tokenizer(self.dir / self.manifest["tokenizer"])


class WindowSampler:
    """Training windows as a pure function of (seed, global sample index).

    The token stream of each shard is cut into non-overlapping windows of ``block_size`` targets (a window holds
    ``block_size + 1`` tokens; its last token is the next window's first). Epoch e visits every window once, in
    the order of ``randperm`` seeded by (seed, e). Sample g of the run is window perm_{g // n}[g % n].
    """

    def __init__(self, shards: list[np.ndarray], block_size: int, seed: int) -> None:
        self.shards, self.block_size, self.seed = shards, block_size, seed
        per_shard = [max(0, (len(s) - 1) // block_size) for s in shards]
        self.n_windows = sum(per_shard)
        if self.n_windows == 0:
            raise ValueError(f"not enough tokens for one window of {block_size + 1} tokens")
        self._starts = np.cumsum([0, *per_shard])  # window index -> shard via searchsorted
        self._perm: tuple[int, torch.Tensor] | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)  # own generator: global RNG untouched
            self._perm = (epoch, torch.randperm(self.n_windows, generator=g))
        return self._perm[1]

    def window(self, index: int) -> np.ndarray:
        """Tokens of the index-th window in stream order (not permuted): shape (block_size + 1,)."""
        shard = int(np.searchsorted(self._starts, index, side="right") - 1)
        start = (index - int(self._starts[shard])) * self.block_size
        return self.shards[shard][start : start + self.block_size + 1]

    def batch(self, first: int, count: int) -> torch.Tensor:
        """Samples first … first+count-1 of the run as int64 (count, block_size + 1)."""
        rows = []
        for g in range(first, first + count):
            epoch, i = divmod(g, self.n_windows)
            rows.append(self.window(int(self._permutation(epoch)[i])))
        return torch.from_numpy(np.stack(rows).astype(np.int64))


def eval_windows(shards: list[np.ndarray], block_size: int, max_tokens: int | None = None) -> list[np.ndarray]:
    """Windows covering the split once: every token except each shard's first is predicted exactly once.

    Windows overlap by one token (input ends where the next window's targets begin); the last one may be shorter.
    ``max_tokens`` keeps a fixed, comparable subset for periodic validation: whole windows spread evenly over the
    split (the first windows alone would all come from its first documents and bias the estimate)."""
    out = [s[start : start + block_size + 1] for s in shards for start in range(0, len(s) - 1, block_size)]
    total = sum(len(w) - 1 for w in out)
    if max_tokens is None or total <= max_tokens or not out:
        return out
    n = min(len(out), -(-max_tokens // block_size))  # whole windows, at least max_tokens targets when full-length
    keep = np.linspace(0, len(out) - 1, n).round().astype(int)
    return [out[i] for i in np.unique(keep)]
