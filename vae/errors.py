"""The one kind of error that means "what you gave is wrong": the CLI prints it as one line, exit 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input, found before anything is written; every domain's input error subclasses this.

    `field` names the input as this code knows it: a config key (`train.precision`,
    `budget.max_epochs`), a parameter of the call (`storage_path`, `address`) or a
    file. The command line puts its own flag name there where it has one, so
    library code never names flags.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")
