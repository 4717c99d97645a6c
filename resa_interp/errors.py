"""The one error type for bad input (the CLI prints it as a single line and exits with code 2), and the helpers
that word such one-line errors."""


class ResaError(Exception):
    """Bad input or an unmet precondition, described in one line: which value, why, what is accepted."""


def check_choice(what: str, value: object, accepted: object, problem: str = "is unknown") -> None:
    """Raise the one-line error "WHAT 'VALUE' is unknown; accepted: A, B" unless `value` is in `accepted`."""
    if value not in accepted:
        raise ResaError(f"{what} {value!r} {problem}; accepted: {', '.join(map(str, accepted))}")


def first_line(exc: BaseException) -> str:
    """An exception's first line (its type name when it has no message), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
