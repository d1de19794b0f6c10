"""CLI commands beyond the two stages: merge, finetune, classify, visualize-filters, frames."""


def add_commands(sub) -> None:
    """Register the extra subcommands on ``sub`` (each module adds its own parser)."""
    from pipeline import cli_merge, cli_more

    cli_merge.add_commands(sub)
    cli_more.add_commands(sub)
