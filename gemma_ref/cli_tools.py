"""CLI subcommands of the reference tooling (dump, compare, perplexity)."""


def add_commands(sub, add_model):
    """Register the tooling subcommands on the `gemma-ref` subparsers."""
