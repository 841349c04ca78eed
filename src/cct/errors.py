class CCTError(Exception):
    """A problem the user can fix (bad input, missing file, unknown name): the CLI prints it as one line."""
