"""Stage-two commands of the CLI: train, evaluate, predict, export."""


def add_commands(sub) -> None:
    """Register the stage-two subcommands on ``sub``."""
