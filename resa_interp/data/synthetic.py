"""A seeded generator of verified CoT-free math questions: every answer is computed, never guessed.

Kinds: integer arithmetic, linear equations, fraction sums, and small word problems. The whole pipeline runs
offline on it; its answers are exact, so it doubles as a tiny evaluation task. `NOVEL_KINDS` (percentages, unit
conversions, remainders, number sequences, rectangle areas, letter counts) never occur in the training data: they
measure how well SAEs trained on it fit trigger text of other question types.
"""

from __future__ import annotations

import random
from fractions import Fraction

from resa_interp.data.example import QAExample

KINDS = ("arithmetic", "linear", "fraction", "word")
_NAMES = ("Ada", "Ben", "Chen", "Dana", "Eli", "Fatima", "Goro", "Hana", "Ivan", "Jia")
_ITEMS = ("apples", "books", "coins", "marbles", "pencils", "stamps", "tickets", "shells")


def _fraction_text(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _arithmetic(rng: random.Random) -> QAExample:
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 12)
    op = rng.choice(["+", "-", "*"])
    inner = {"+": a + b, "-": a - b, "*": a * b}[op]
    outer = rng.choice(["+", "*"])
    value = inner + c if outer == "+" else inner * c
    return QAExample(f"What is ({a} {op} {b}) {outer} {c}?", str(value))


def _linear(rng: random.Random) -> QAExample:
    x = rng.randint(-20, 20)
    a = rng.choice([i for i in range(-9, 10) if i not in (0, 1)])
    b = rng.choice([i for i in range(-30, 31) if i != 0])
    sign = "+" if b >= 0 else "-"
    return QAExample(f"Solve for x: {a}x {sign} {abs(b)} = {a * x + b}.", str(x))


def _fraction(rng: random.Random) -> QAExample:
    p = Fraction(rng.randint(1, 9), rng.randint(2, 12))
    q = Fraction(rng.randint(1, 9), rng.randint(2, 12))
    op = rng.choice(["+", "-"])
    value = p + q if op == "+" else p - q
    return QAExample(
        f"Compute {p.numerator}/{p.denominator} {op} {q.numerator}/{q.denominator} in lowest terms.",
        _fraction_text(value),
    )


def _word(rng: random.Random) -> QAExample:
    name, other = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    start, bought, given = rng.randint(5, 60), rng.randint(2, 30), rng.randint(1, 5)
    total = start + bought
    if total % given == 0 and given > 1:
        share = total // given
        return QAExample(
            f"{name} has {start} {item} and buys {bought} more, then shares them equally among {given} "
            f"friends. How many {item} does each friend get?",
            str(share),
        )
    return QAExample(
        f"{name} has {start} {item}, buys {bought} more and gives {given} to {other}. "
        f"How many {item} does {name} have now?",
        str(total - given),
    )


def _percent(rng: random.Random) -> QAExample:
    base, pct = rng.randint(1, 40) * 20, rng.choice([5, 10, 15, 20, 25, 40, 50, 75])
    return QAExample(f"What is {pct}% of {base}?", _fraction_text(Fraction(base * pct, 100)))


def _units(rng: random.Random) -> QAExample:
    unit, small, factor = rng.choice([("kilometres", "metres", 1000), ("hours", "minutes", 60),
                                      ("kilograms", "grams", 1000), ("feet", "inches", 12)])
    n = rng.randint(2, 30)
    return QAExample(f"How many {small} are there in {n} {unit}?", str(n * factor))


def _remainder(rng: random.Random) -> QAExample:
    a, m = rng.randint(50, 999), rng.randint(3, 13)
    return QAExample(f"What is the remainder when {a} is divided by {m}?", str(a % m))


def _sequence(rng: random.Random) -> QAExample:
    start, step = rng.randint(1, 20), rng.randint(2, 9)
    terms = [start + i * step for i in range(4)]
    return QAExample(f"What is the next number in the sequence {', '.join(map(str, terms))}?", str(start + 4 * step))


def _area(rng: random.Random) -> QAExample:
    w, h = rng.randint(2, 40), rng.randint(2, 40)
    return QAExample(f"A rectangle is {w} cm wide and {h} cm tall. What is its area in square centimetres?",
                     str(w * h))


def _letters(rng: random.Random) -> QAExample:
    word = rng.choice(("banana", "mississippi", "committee", "bookkeeper", "assessment", "parallel", "referee"))
    letter = rng.choice(sorted(set(word)))
    return QAExample(f"How many times does the letter '{letter}' appear in the word '{word}'?", str(word.count(letter)))


_MAKERS = {"arithmetic": _arithmetic, "linear": _linear, "fraction": _fraction, "word": _word,
           "percent": _percent, "units": _units, "remainder": _remainder, "sequence": _sequence, "area": _area,
           "letters": _letters}
NOVEL_KINDS = ("percent", "units", "remainder", "sequence", "area", "letters")
"""Question kinds the training data never has (held-out text for the SAEs' quality off the training kinds)."""


def synthetic_qa(n: int, seed: int = 0, kinds: tuple[str, ...] = KINDS) -> list[QAExample]:
    """`n` verified question/answer pairs, the same for the same seed, kinds in rotation."""
    rng = random.Random(seed)
    return [_MAKERS[kinds[i % len(kinds)]](rng) for i in range(n)]
