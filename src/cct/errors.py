from collections.abc import Sequence


class CCTError(Exception):
    """A problem the user can fix (bad input, missing file, unknown name): the CLI prints it as one line."""


def first_few(items: Sequence[str], limit: int, sep: str = ", ") -> str:
    """The first `limit` items joined by `sep`, then how many more there are: "a, b, c and 7 more"."""
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return sep.join(items[:limit]) + more
