"""Turn model outputs into answers: parse generated text, or pick the best-scoring option.

Pure Python (no torch). Every parser returns None when the text does not give one clear answer: the
caller counts that as wrong and reports the count (never a random guess).

Rules, in short:
- parse_yes_no / parse_true_false: the first word decides ("Yes.", "yes, but ..." -> yes); otherwise
  the text must contain exactly one of the two words as a whole word ("I think it is no" -> no).
  Word boundaries matter: "yesterday" is not "yes", "nobody" is not "no".
- parse_option_letter: "B", "(B)", "B)", "B.", "b)", "The answer is (B)", "Answer: B", "option B";
  a bare lower-case letter alone is not accepted as the first word ("a mug ..." is an article).
- parse_option_text: the generated text equals one option, or contains exactly one option (after
  lower-casing and dropping punctuation); an option contained in a longer matching option yields.
- paper_contains_yes: the released ZeroVLM evaluator's rule, kept for paper parity only: an answer
  is "yes" when the lower-cased output contains the substring "yes" anywhere (so "yesterday" counts,
  and "no, not yes" counts as yes). Use it only in answer_mode "paper".
"""

from __future__ import annotations

import math
import re
import string
from typing import Sequence

_WORD = re.compile(r"[a-z]+")
_LEADING_JUNK = " \t\r\n\"'`*_#>:-([{"


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _binary(text: str | None, positive: str, negative: str) -> bool | None:
    if not text:
        return None
    words = _words(text)
    if not words:
        return None
    if words[0] in (positive, negative):
        return words[0] == positive
    found = {w for w in words if w in (positive, negative)}
    if len(found) == 1:
        return found.pop() == positive
    return None


def parse_yes_no(text: str | None) -> bool | None:
    """True for yes, False for no, None when unclear (empty, neither word, or both after the first)."""
    return _binary(text, "yes", "no")


def parse_true_false(text: str | None) -> bool | None:
    """True for "true", False for "false", None when unclear; same rules as parse_yes_no."""
    return _binary(text, "true", "false")


def _letter_index(letter: str, n_options: int) -> int | None:
    index = ord(letter.upper()) - ord("A")
    return index if 0 <= index < n_options else None


_LETTER_PATTERNS = (
    # at the very start: "(B)", "(b)", "B)", "b)", "B.", "B:", or the whole answer "B"
    re.compile(r"^\(([A-Za-z])\)(?:\W|$)"),
    re.compile(r"^([A-Za-z])[).:](?:\s|$)"),
    re.compile(r"^([A-Z])\W*$"),
    # "the answer is (B)", "Answer: B", "option B", "choice (c)"; a bare letter there must be upper case
    re.compile(r"(?i:\b(?:answer|option|choice)\s*(?:is\s*)?:?)\s*(?:\(([A-Za-z])\)|([A-Z])(?![A-Za-z]))"),
)
_PAREN_LETTER = re.compile(r"\(([A-Za-z])\)")


def parse_option_letter(text: str | None, n_options: int) -> int | None:
    """The 0-based option index a letter answer names (A -> 0), None when absent, ambiguous or out of range."""
    if not text or n_options < 1:
        return None
    stripped = text.strip().lstrip(" \t\r\n\"'`*_#>")
    for pattern in _LETTER_PATTERNS:
        match = pattern.search(stripped)
        if match:
            letter = next(g for g in match.groups() if g)
            return _letter_index(letter, n_options)
    letters = {m.upper() for m in _PAREN_LETTER.findall(stripped)}
    if len(letters) == 1:
        return _letter_index(letters.pop(), n_options)
    return None


_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def _normalise(text: str) -> str:
    return " ".join(text.lower().translate(_PUNCT).split())


def parse_option_text(text: str | None, options: Sequence[str]) -> int | None:
    """The index of the option the text states (exact, or the only option contained), else None."""
    if not text or not options:
        return None
    answer = _normalise(text)
    normalised = [_normalise(o) for o in options]
    exact = [i for i, o in enumerate(normalised) if o and o == answer]
    if len(exact) == 1:
        return exact[0]
    padded = f" {answer} "
    contained = [i for i, o in enumerate(normalised) if o and f" {o} " in padded]
    # drop a match that is part of another, longer match ("mug on table" inside "mug on table edge")
    maximal = [i for i in contained
               if not any(j != i and normalised[i] != normalised[j] and f" {normalised[i]} " in f" {normalised[j]} "
                          for j in contained)]
    return maximal[0] if len(maximal) == 1 else None


def paper_contains_yes(text: str | None) -> bool:
    """The authors' rule (released ZeroVLM evaluator): yes iff "yes" occurs anywhere in the lower-cased text."""
    return "yes" in (text or "").lower()


def best_option(logprobs: Sequence[float]) -> int | None:
    """Index of the highest summed log-probability; ties go to the first; None if empty or any NaN."""
    if not logprobs or any(math.isnan(x) for x in logprobs):
        return None
    return max(range(len(logprobs)), key=lambda i: (logprobs[i], -i))
