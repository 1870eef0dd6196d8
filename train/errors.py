"""`InputError`: a bad input the user can fix (a path, a data source, an output folder, a checkpoint).

Its message names the input, the problem and what to do; `python -m train` prints it as one line, without a
traceback. Anything else that escapes is a bug and keeps its traceback.

    raise InputError("--data missing/: no such file or folder")
"""


class InputError(ValueError):
    """A bad input, named with its problem (a `ValueError`, so callers catching those keep working)."""


__all__ = ["InputError"]
