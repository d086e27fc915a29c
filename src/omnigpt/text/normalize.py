"""Transcript normalisers for word error rates, applied to reference and hypothesis alike.

* ``normalize_basic`` (``normalize_transcript``): lower case, bracketed notes dropped, "." removed, every other
  character outside [a-z0-9'] a space, digits as written: faster-whisper's reported setting, and how the speech
  datasets store their transcripts.
* ``normalize_numbers``: basic, with each digit string spelled out as an English cardinal ("28.8" → "twenty eight
  point eight", "%" → "percent"), so "dial 2" and "dial two" agree.
* ``normalize_english``: numbers plus ordinals, currency, OpenAI Whisper's English rules for notes in parentheses,
  fillers and contractions, and a few spelling pairs: what ``omnigpt eval`` reports for ``asr-whisper`` runs.

Numbers go to words, not words to digits as OpenAI's ``EnglishTextNormalizer`` does: spelling out is a total
function, so no digit reading ("oh", "double two") has to be guessed.
"""

from __future__ import annotations

import re

_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_ORDINAL = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth", "nine": "ninth",
            "twelve": "twelfth"}


def cardinal(n: int) -> str:
    """English words for 0 <= n < 10^12, without "and": 1234 → "one thousand two hundred thirty four"."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for size, word in ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            rest = n % size
            return f"{cardinal(n // size)} {word}" + ("" if rest == 0 else " " + cardinal(rest))
    raise ValueError(f"cardinal: {n} is out of range")


def ordinal(n: int) -> str:
    """21 → "twenty first": the last word of the cardinal made ordinal."""
    *head, last = cardinal(n).split()
    last = _ORDINAL.get(last) or (last[:-1] + "ieth" if last.endswith("y") else last + "th")
    return " ".join([*head, last])


def normalize_transcript(text: str) -> str:
    """Lower case, words only: "A.M." → "am", "Call-Forward" → "call forward", bracketed notes dropped."""
    text = re.sub(r"\[[^\]]*\]", " ", text).lower().replace(".", "")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    return " ".join(text.split())


def normalize_basic(text: str) -> str:
    """basic: lower case, punctuation stripped, digits as written (faster-whisper's reported setting)."""
    return normalize_transcript(text)


def _spell_numbers(text: str) -> str:
    """Each digit string (after basic normalisation) as its cardinal."""
    return " ".join(re.sub(r"\d+", lambda m: " " + cardinal(int(m.group())) + " ", text).split())


def normalize_numbers(text: str) -> str:
    """numbers: basic with digit strings spelled out ("28.8%" → "twenty eight point eight percent")."""
    text = re.sub(r"(\d)\.(\d)", r"\1 point \2", text.replace("%", " percent"))  # before basic drops the "."
    return _spell_numbers(normalize_basic(text))


# Spellings that differ between the Asterisk transcripts and Whisper for the same spoken words (matched on whole
# words after basic normalisation). Each pair says the same thing, so neither side is favoured.
SPELLINGS = {"okay": "ok", "e mail": "email", "voice mail": "voicemail", "log in": "login", "dial tone": "dialtone"}

# OpenAI Whisper's EnglishTextNormalizer (openai-whisper 20250625, whisper/normalizers/english.py): its fillers and
# its common and general contraction rules, in its order.
FILLERS = re.compile(r"\b(hmm|mm|mhm|mmm|uh|um)\b")
CONTRACTIONS = ((r"\bwon't\b", "will not"), (r"\bcan't\b", "can not"), (r"\blet's\b", "let us"),
                (r"\bain't\b", "aint"), (r"\by'all\b", "you all"), (r"\bma'am\b", "madam"),
                (r"'d been\b", " had been"), (r"'s been\b", " has been"), (r"'d gone\b", " had gone"),
                (r"'s gone\b", " has gone"), (r"'d done\b", " had done"), (r"'s got\b", " has got"),
                (r"n't\b", " not"), (r"'re\b", " are"), (r"'s\b", " is"), (r"'d\b", " would"), (r"'ll\b", " will"),
                (r"'t\b", " not"), (r"'ve\b", " have"), (r"'m\b", " am"))


def normalize_english(text: str) -> str:
    """english: basic plus OpenAI Whisper's English rules for notes (parenthesised ones dropped like bracketed ones:
    "(2 seconds of silence)"), fillers (um, uh) and contractions ("i'm" → "i am", "can't" → "can not"); numbers
    spelled out as words ("2" → "two", "1st" → "first", "28.8" → "twenty eight point eight", "%" → "percent",
    "$5" → "five dollars"; OpenAI turns words into digits instead) and the spelling pairs of SPELLINGS unified."""
    text = re.sub(r"\([^)]*\)", " ", text).replace("%", " percent")
    text = re.sub(r"\$(\d+)", r"\1 dollars", text)
    text = re.sub(r"(\d),(\d{3})\b", r"\1\2", text)  # 1,000 → 1000
    text = re.sub(r"(\d)\.(\d)", r"\1 point \2", text)  # before basic drops the "."
    text = normalize_basic(text)
    text = re.sub(r"\b(\d+)(st|nd|rd|th)\b", lambda m: " " + ordinal(int(m.group(1))) + " ", text)
    text = _spell_numbers(text)
    text = FILLERS.sub(" ", text)
    for pattern, replacement in CONTRACTIONS:
        text = re.sub(pattern, replacement, text)
    text = " " + " ".join(text.split()) + " "
    for a, b in SPELLINGS.items():
        text = text.replace(f" {a} ", f" {b} ")
    return " ".join(text.split())


NORMALIZERS = {"basic": normalize_basic, "english": normalize_english}

__all__ = ["NORMALIZERS", "cardinal", "normalize_basic", "normalize_english", "normalize_numbers",
           "normalize_transcript", "ordinal"]
