"""Turn model outputs into answers: parse generated text, or pick the best-scoring option.

Pure Python (no torch). Every parser returns None when the text does not give one clear answer: the
caller counts that as wrong and reports the count (never a random guess).

The text parsers find the mentions of answers in a text and read each in its clause (clauses end at
, . ; ! ? a line break, "but" and "however"):
1. Negation: a negation word ("not", "never", "cannot", "neither", "...n't") among the two words before a
   mention; or right after it "wrong", "incorrect", "false", a "...n't" word, or "is" (are, was, were)
   followed within two words by one of these or a negation word. A negated verdict reads as its opposite
   ("Not true." is false, "isn't false" is true); a negated letter or option is rejected ("Option A is
   wrong", "not (A)").
2. Mentions joined only by and/or/nor/commas/slashes form a list that shares one negation ("Neither (A)
   nor (B)", "A and C are wrong").
3. A mention in a question (a sentence ending in "?") or after "if"/"whether" in its clause counts for nothing.
4. The answer is the one answer that the remaining mentions name; none, or more than one, is None: "Yes,
   but ..." is yes, "Yes and no", "(A) or (B)" and "The answer is A and B" are None.
Mentions are whole words ("yesterday" is not "yes", "nobody" is not "no"):
- yes/no, true/false: the two words; past the first word, "no" counts only before a punctuation mark,
  the end, a conjunction or a preposition ("no in the left view"), or in a list after "yes" ("yes or
  no from here"); elsewhere it is a determiner ("there is no mug", "and no other object").
- option letters: "(B)" anywhere; a capital letter standing alone ("B", "B.", "B is correct", "The answer
  is B"); a lower-case letter opening the text before ")", "." or ":" ("b)"). "A" and "I" before a word
  other than and/or/nor/is/because are the article and the pronoun ("A mug on a table", "I think").
- option texts: the option's words in a row, case and punctuation ignored, unless inside an occurrence
  of a longer option ("mug on table" inside "mug on table edge").

paper_contains_yes is the released ZeroVLM evaluator's rule, kept for paper parity only: an answer is
"yes" when the lower-cased output contains the substring "yes" anywhere (so "yesterday" counts, and
"no, not yes" counts as yes). Use it only in answer_mode "paper".
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

# a parenthesised letter "(b)", a word (letters and digits, inner apostrophes: "isn't"), a line break, or
# any other single character that is not a space
_TOKEN = re.compile(r"\([A-Za-z]\)|[^\W_]+(?:'[^\W_]+)*|\n|[^\w\s]|_")
_CLAUSE_END = {",", ".", ";", "!", "?", "\n"}
_CLAUSE_START = {"but", "however"}
_SENTENCE_END = {".", "!", "?", "\n"}
_NEGATIONS = {"not", "never", "cannot", "neither"}
_REJECTIONS = {"wrong", "incorrect", "false"}
_COPULAS = {"is", "are", "was", "were"}
_LIST_JOINS = {",", "/", "&", "and", "or", "nor"}
_CONDITIONALS = {"if", "whether"}
# words that follow the verdict "no" but never the determiner: conjunctions and prepositions
_AFTER_VERDICT_NO = {
    "and",
    "or",
    "nor",
    "but",
    "because",
    "since",
    "so",
    "as",
    "in",
    "on",
    "at",
    "for",
    "from",
    "according",
}
_AFTER_LETTER = {"and", "or", "nor", "is", "because"}  # "A is ...", never the article "A ..."


def _negates(word: str) -> bool:
    return word in _NEGATIONS or word.endswith("n't")


def _is_word(token: str) -> bool:
    return token[:1].isalnum() or len(token) == 3 and token[0] == "("  # "(b)" counts as a word


@dataclass(frozen=True)
class _Mention:
    first: int  # token index of its first word
    last: int  # token index of its last word
    value: int  # the option it names (for verdicts: 1 for the positive word, 0 for the negative)


class _Text:
    """The tokens of a text with their clause and whether their sentence is a question."""

    def __init__(self, text: str):
        self.source = text.replace("\u2019", "'")  # the typographic apostrophe (U+2019) as in "isn't"
        matches = list(_TOKEN.finditer(self.source))
        self.tokens = [m.group() for m in matches]
        self.ends = [m.end() for m in matches]
        self.lower = [t.lower() for t in self.tokens]
        self.words = [i for i, t in enumerate(self.tokens) if _is_word(t)]
        self.clause, self.asked = [], [False] * len(self.tokens)
        clause, sentence_start = 0, 0
        for i, token in enumerate(self.lower):
            clause += token in _CLAUSE_START
            self.clause.append(clause)
            clause += token in _CLAUSE_END
            if token in _SENTENCE_END:
                if token == "?":
                    self.asked[sentence_start : i + 1] = [True] * (i + 1 - sentence_start)
                sentence_start = i + 1

    def next_token(self, i: int) -> str:
        return self.tokens[i + 1] if i + 1 < len(self.tokens) else ""

    def before(self, i: int, limit: int | None = None) -> list[str]:
        """The words before token i in its clause, nearest first, at most `limit`."""
        found = []
        for j in range(i - 1, -1, -1):
            if self.clause[j] != self.clause[i] or len(found) == limit:
                break
            if _is_word(self.tokens[j]):
                found.append(self.lower[j])
        return found

    def after(self, i: int, limit: int) -> list[str]:
        """The words after token i in its clause, nearest first, at most `limit`."""
        found = []
        for j in range(i + 1, len(self.tokens)):
            if self.clause[j] != self.clause[i] or len(found) == limit:
                break
            if _is_word(self.tokens[j]):
                found.append(self.lower[j])
        return found

    def asserted(self, mention: _Mention) -> bool:
        return not self.asked[mention.first] and not _CONDITIONALS & set(self.before(mention.first))

    def lists(self, mentions: list[_Mention]) -> list[list[_Mention]]:
        """Asserted mentions in text order, grouped where only list joins ("and", ",", ...) separate them."""
        groups: list[list[_Mention]] = []
        for mention in sorted((m for m in mentions if self.asserted(m)), key=lambda m: m.first):
            between = self.lower[groups[-1][-1].last + 1 : mention.first] if groups else []
            if between and all(t in _LIST_JOINS for t in between):
                groups[-1].append(mention)
            else:
                groups.append([mention])
        return groups

    def negated(self, group: list[_Mention]) -> bool:
        if any(_negates(w) for w in self.before(group[0].first, 2)):
            return True
        after = self.after(group[-1].last, 3)
        if after and (after[0] in _REJECTIONS or after[0].endswith("n't")):
            return True
        return bool(after) and after[0] in _COPULAS and any(w in _REJECTIONS or _negates(w) for w in after[1:])


def _accepted(text: _Text, mentions: list[_Mention]) -> int | None:
    """The one value that the mentions not negated name, else None."""
    values = {m.value for group in text.lists(mentions) if not text.negated(group) for m in group}
    return values.pop() if len(values) == 1 else None


def _verdict_no(text: _Text, i: int) -> bool:
    """Whether "no" at token i is a verdict, not a determiner ("there is no mug")."""
    following = text.next_token(i)
    return (
        i == text.words[0]
        or not _is_word(following)
        or following.lower() in _AFTER_VERDICT_NO
        or i >= 2
        and text.lower[i - 2] == "yes"
        and text.lower[i - 1] in _LIST_JOINS
    )  # "yes or no ..."


def _binary(text: str | None, positive: str, negative: str) -> bool | None:
    if not text:
        return None
    parsed = _Text(text)
    mentions = [
        _Mention(i, i, int(parsed.lower[i] == positive))
        for i in parsed.words
        if parsed.lower[i] in (positive, negative) and (parsed.lower[i] != "no" or _verdict_no(parsed, i))
    ]
    verdicts = {bool(m.value) != parsed.negated(group) for group in parsed.lists(mentions) for m in group}
    return verdicts.pop() if len(verdicts) == 1 else None


def parse_yes_no(text: str | None) -> bool | None:
    """True for yes, False for no, None when unclear (see the module docstring)."""
    return _binary(text, "yes", "no")


def parse_true_false(text: str | None) -> bool | None:
    """True for "true", False for "false", None when unclear; same rules as parse_yes_no."""
    return _binary(text, "true", "false")


def _letter(text: _Text, i: int) -> int | None:
    """The 0-based option index token i names as a letter, else None."""
    token, following = text.tokens[i], text.next_token(i)
    if token[0] == "(":  # "(b)"
        return ord(token[1].upper()) - ord("A")
    if len(token) != 1 or not token.isascii() or not token.isalpha() or text.source[text.ends[i] :][:1] == "-":
        return None  # not a single letter, or part of a word ("X-ray")
    if token.islower():  # only "b)", "b.", "b:" opening the text, the mark followed by a space or the end
        rest = text.source[text.ends[i] : text.ends[i] + 2]
        if i != text.words[0] or rest[:1] not in (")", ".", ":") or rest[1:].strip():
            return None
    elif token in "AI" and _is_word(following) and following.lower() not in _AFTER_LETTER:
        return None  # the article, the pronoun
    return ord(token.upper()) - ord("A")


def parse_option_letter(text: str | None, n_options: int) -> int | None:
    """The 0-based option index a letter answer names (A -> 0), None when absent, ambiguous or out of range."""
    if not text or n_options < 1:
        return None
    parsed = _Text(text)
    mentions = [_Mention(i, i, index) for i in parsed.words if (index := _letter(parsed, i)) is not None]
    index = _accepted(parsed, mentions)
    return index if index is not None and 0 <= index < n_options else None


def parse_option_text(text: str | None, options: Sequence[str]) -> int | None:
    """The index of the one option the text states (see the module docstring), else None."""
    if not text or not options:
        return None
    parsed = _Text(text)
    words = [parsed.lower[i] for i in parsed.words]
    found = []
    for k, option in enumerate(options):
        option_text = _Text(option)
        target = [option_text.lower[i] for i in option_text.words]
        for p in range(len(words) - len(target) + 1) if target else ():
            if words[p : p + len(target)] == target:
                found.append(_Mention(parsed.words[p], parsed.words[p + len(target) - 1], k))
    # an occurrence inside a longer one is part of it ("mug on table" inside "mug on table edge")
    outer = [
        m
        for m in found
        if not any(o.first <= m.first and m.last <= o.last and o.last - o.first > m.last - m.first for o in found)
    ]
    return _accepted(parsed, outer)


def paper_contains_yes(text: str | None) -> bool:
    """The authors' rule (released ZeroVLM evaluator): yes iff "yes" occurs anywhere in the lower-cased text."""
    return "yes" in (text or "").lower()


def best_option(logprobs: Sequence[float]) -> int | None:
    """Index of the highest summed log-probability; ties go to the first; None if empty or any NaN."""
    if not logprobs or any(math.isnan(x) for x in logprobs):
        return None
    return max(range(len(logprobs)), key=lambda i: (logprobs[i], -i))
