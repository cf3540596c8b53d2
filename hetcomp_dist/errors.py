"""One exception type for every input problem a user can fix, and one for a training that diverged."""

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


class TrainingDiverged(RuntimeError):
    """A training whose epoch loss is not a finite number: its weights are no longer usable.

    Raised before that epoch's snapshot or checkpoint is written, so a rerun with a smaller learning
    rate starts from a fresh model (the rate is in the config hash) and never from the diverged one.
    """

    def __init__(self, who: str, epoch: int, loss: float, fix: str) -> None:
        self.who, self.epoch, self.loss, self.fix = who, epoch, loss, fix
        super().__init__(f"{who}: epoch {epoch}'s mean loss is {loss}: the training diverged -- {fix}")

    def __reduce__(self):  # as InputError: Ray pickles a task's exception to raise it in the driver
        return type(self), (self.who, self.epoch, self.loss, self.fix)
