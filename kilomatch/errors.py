"""The one exception type kilomatch raises for bad input or settings."""


class KilomatchError(ValueError):
    """Bad input data or settings.

    The message names the file, unit, session or setting at fault, says what was expected and
    what was found. ``problems`` holds every problem found when several were collected at once.
    """

    def __init__(self, message, problems=None):
        self.problems = list(problems) if problems else [message]
        super().__init__(message)

    @classmethod
    def from_problems(cls, problems, header="Problems found"):
        """One error listing every problem, numbered."""
        problems = list(problems)
        if len(problems) == 1:
            return cls(problems[0], problems)
        lines = [f"{header} ({len(problems)}):"]
        lines += [f"  {k}. {p}" for k, p in enumerate(problems, 1)]
        return cls("\n".join(lines), problems)
