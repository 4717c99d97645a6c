"""The one error type for bad input: the CLI prints it as a single line and exits with code 2."""


class ResaError(Exception):
    """Bad input or an unmet precondition, described in one line: which value, why, what is accepted."""
