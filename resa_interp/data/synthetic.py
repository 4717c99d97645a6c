"""A seeded generator of verified CoT-free math questions: every answer is computed, never guessed.

Kinds: integer arithmetic, linear equations, fraction sums, and small word problems. The whole pipeline runs
offline on it; its answers are exact, so it doubles as a tiny evaluation task.
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


_MAKERS = {"arithmetic": _arithmetic, "linear": _linear, "fraction": _fraction, "word": _word}


def synthetic_qa(n: int, seed: int = 0, kinds: tuple[str, ...] = KINDS) -> list[QAExample]:
    """`n` verified question/answer pairs, the same for the same seed, kinds in rotation."""
    rng = random.Random(seed)
    return [_MAKERS[kinds[i % len(kinds)]](rng) for i in range(n)]
