"""Concept tokens: `[P]`-style pseudo-words, their syntax, and the check that a prompt uses only known ones."""

from __future__ import annotations

import re
from typing import Iterable, Sequence

from lcd.errors import PromptError

CONCEPT_TOKEN = re.compile(r"\[[A-Za-z0-9_\-]+\]")


def concept_tokens(prompt: str) -> list[str]:
    """The `[NAME]` tokens a prompt uses, in order of appearance."""
    return CONCEPT_TOKEN.findall(prompt)


def check_prompt(prompt: str, known: Iterable[str], required: Sequence[str] = (), item: str = "prompt") -> None:
    """Raise PromptError when `prompt` uses an unknown concept token, or lacks every `required` one."""
    known = set(known)
    for tok in concept_tokens(prompt):
        if tok not in known:
            have = ", ".join(sorted(known)) or "none"
            raise PromptError(
                f"{item}: prompt {prompt!r} uses concept token {tok} that no loaded concept defines "
                f"(loaded: {have}); pass the concept that defines it (--concept DIR)",
                item=item,
            )
    if required and not any(tok in prompt for tok in required):
        raise PromptError(
            f"{item}: prompt {prompt!r} does not contain the concept token "
            f"({' or '.join(required)}); the concept would not be used",
            item=item,
        )


# --- trigger words for other tools (export naming) ----------------------------------------------
# A1111 names a textual-inversion embedding after its file and fires it wherever a prompt's CLIP
# tokens (lower-cased) contain the name's tokens: '[P]' exported as 'P' fired on every "p", '[DOG]'
# would replace every "dog". An exported trigger is one run of lower-case letters (no digit, '_' or
# '-', which CLIP splits into separate word tokens such as 'dog</w>'): 'lcd' + the consonants of the
# concept's name + a tag of rare letters from a hash + 'qzx', whose last BPE piece is always the
# rare 'zx</w>' ('[P]' of concepts/dog -> 'lcddg' + 5 tag letters + 'qzx').
TRIGGER_PREFIX, TRIGGER_SUFFIX = "lcd", "qzx"
TRIGGER_TAG_LETTERS, TRIGGER_TAG_LEN, TRIGGER_STEM_LEN = "jkqvwxz", 5, 16
TRIGGER_WORD = re.compile(rf"{TRIGGER_PREFIX}[a-z]*[{TRIGGER_TAG_LETTERS}]{{{TRIGGER_TAG_LEN}}}{TRIGGER_SUFFIX}")


def trigger_stem(text: str) -> str:
    """The consonants of `text`, lower-cased, at most TRIGGER_STEM_LEN: 'My_Dog-2' -> 'mydg'.
    Without vowels the name cannot spell a syllable that ordinary words split into: a folder
    named 'cobblestone' kept whole gave the piece 'cobble', which "a cobblestone street" has."""
    return re.sub(r"[^b-df-hj-np-tv-z]", "", text.lower())[:TRIGGER_STEM_LEN]


def trigger_word(name: str, token: str, salt: bytes = b"") -> str:
    """The word other tools' prompts use for concept `name`'s `token` ('[P]' of 'concepts/dog' ->
    'lcddg' + 5 tag letters + 'qzx'): the same for the same concept (the tag hashes name, token
    and `salt`, e.g. the embedding's bytes), distinct between tokens and concepts of one name."""
    import hashlib

    base = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    stem = trigger_stem(base) or trigger_stem(token.strip("[]")) or "cncpt"
    digest = hashlib.sha256(b"\0".join([base.encode("utf-8", "replace"), token.encode("utf-8", "replace"), salt])).digest()
    tag = "".join(TRIGGER_TAG_LETTERS[b % len(TRIGGER_TAG_LETTERS)] for b in digest[:TRIGGER_TAG_LEN])
    return f"{TRIGGER_PREFIX}{stem}{tag}{TRIGGER_SUFFIX}"


def trigger_words(name: str, tokens: Sequence[str], salts: Sequence[bytes] = ()) -> dict[str, str]:
    """{token: trigger word} for a concept's tokens; a concept of several tokens adds each token's
    own letters to the stem ('dgmg' + 'dg' / 'mg') so the words tell them apart."""
    salts = list(salts) + [b""] * (len(tokens) - len(salts))
    if len(tokens) == 1:
        return {tokens[0]: trigger_word(name, tokens[0], salts[0])}
    base = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    out: dict[str, str] = {}
    for i, (tok, salt) in enumerate(zip(tokens, salts)):
        stem = (trigger_stem(base)[:8] + trigger_stem(tok.strip("[]"))[:8]) or "cncpt"
        word, n = trigger_word(stem, tok, salt + base.encode("utf-8", "replace")), 0
        while word in out.values():  # a hash tie between two tokens of one concept
            n += 1
            word = trigger_word(stem, tok, salt + bytes([i % 256, n % 256]))
        out[tok] = word
    return out


def check_trigger(word: str, tokenizer, item: str = "export") -> list[str]:
    """`word` must be a trigger (TRIGGER_WORD) that is no word of `tokenizer`'s vocabulary and
    splits into at least 3 BPE pieces ending in a rare one -> its pieces (CLIP tokens)."""
    pieces = tokenizer.tokenize(word)
    vocab = tokenizer.get_vocab()
    if not TRIGGER_WORD.fullmatch(word) or f"{word}</w>" in vocab or word in vocab or len(pieces) < 3:
        raise PromptError(f"{item}: trigger word {word!r} could collide with ordinary words "
                          f"(tokens {pieces}); pick a concept name of letters", item=item)
    return pieces
