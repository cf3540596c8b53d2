"""One exception type for every input problem a user can fix."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: names where (file, line, column or config field), what is wrong, and the fix.

    Raised before anything is written, so a failed stage leaves no partial artefact.
    """

    def __init__(self, where: str, problem: str, fix: str = "") -> None:
        self.where, self.problem, self.fix = where, problem, fix
        msg = f"{where}: {problem}"
        if fix:
            msg += f" -- {fix}"
        super().__init__(msg)

    def __reduce__(self):
        # Exception pickles as cls(*args) = cls(message), which cannot rebuild this one, and Ray pickles
        # a task's exception to raise it in the driver
        return type(self), (self.where, self.problem, self.fix)
