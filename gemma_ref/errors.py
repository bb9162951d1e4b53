"""The library's one exception type.

Every user mistake (bad path, corrupt file, unknown model, bad argument) raises
`GemmaRefError` with a message that says what went wrong and what to do. The CLI
prints that message on one line and exits non-zero.
"""


class GemmaRefError(Exception):
    """A problem the user can fix: the message names the file/tensor/argument and the fix."""
