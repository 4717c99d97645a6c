"""Worked solutions: question kinds whose verified answers come with a step-by-step reasoning trace, the ability a
transfer experiment's source model is taught (`tune --no-sae --template r1-trace` on these texts).

Kinds: column addition of two 3-digit numbers (carries spelled out), a 3-digit number times a digit (carries spelled
out), and two-step linear equations (`a x + b = c`, undone one operation at a time). Every trace ends with the
answer, which is computed, never guessed. The questions never occur in `synthetic_qa` (other wording and ranges).
"""

from __future__ import annotations

import random

from resa_interp.data.example import QAExample

TRACE_KINDS = ("addition", "multiplication", "two_step")
"""The kinds with worked solutions."""


def _column_steps(digits: list[tuple[int, ...]], op: str) -> tuple[list[str], int]:
    """One line per column, ones first: the column's sum (or product plus carry), the digit written, the carry."""
    lines, carry, written = [], 0, []
    for i, column in enumerate(digits):
        if op == "+":
            value = sum(column) + carry
            expr = " + ".join(map(str, column)) + (f" + {carry}" if carry else "")
        else:
            value = column[0] * column[1] + carry
            expr = f"{column[0]} * {column[1]}" + (f" + {carry}" if carry else "")
        last = i == len(digits) - 1
        digit, carry = (value, 0) if last else divmod(value, 10)[::-1]
        written.append(str(digit))
        lines.append(f"{expr} = {value}, write {digit}" + ("" if last or not carry else f", carry {carry}") + ".")
    return lines, int("".join(reversed(written)))


def _addition(rng: random.Random) -> QAExample:
    a, b = rng.randint(100, 999), rng.randint(100, 999)
    columns = [(a // 10**i % 10, b // 10**i % 10) for i in range(3)]
    lines, total = _column_steps(columns, "+")
    assert total == a + b
    return QAExample(f"What is {a} + {b}?", str(a + b), " ".join(lines) + f" So {a} + {b} = {a + b}.")


def _multiplication(rng: random.Random) -> QAExample:
    a, m = rng.randint(100, 999), rng.randint(2, 9)
    columns = [(a // 10**i % 10, m) for i in range(3)]
    lines, product = _column_steps(columns, "*")
    assert product == a * m
    return QAExample(f"What is {a} * {m}?", str(a * m), " ".join(lines) + f" So {a} * {m} = {a * m}.")


def _two_step(rng: random.Random) -> QAExample:
    a, x, b = rng.randint(2, 9), rng.randint(2, 25), rng.randint(1, 60)
    c = a * x + b
    trace = (f"Subtract {b} from both sides: {a}x = {c} - {b} = {c - b}. "
             f"Divide both sides by {a}: x = {c - b} / {a} = {x}.")
    return QAExample(f"Find x if {a}x + {b} = {c}.", str(x), trace)


_MAKERS = {"addition": _addition, "multiplication": _multiplication, "two_step": _two_step}


def traced_qa(n: int, seed: int = 0, kinds: tuple[str, ...] = TRACE_KINDS) -> list[QAExample]:
    """`n` questions with worked solutions (`QAExample.trace`), the same for the same seed, kinds in rotation."""
    rng = random.Random(seed)
    return [_MAKERS[kinds[i % len(kinds)]](rng) for i in range(n)]
