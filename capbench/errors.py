"""User-facing errors: one line that names the problem and the fix."""


class CapbenchError(Exception):
    """An error caused by user input (a task, a file, a flag); the CLI prints it as one line."""
