"""The ``funcattr`` command group; each command module adds its command to :func:`main`.

The command modules import torch, the registries and the models; ``funcattr --help`` needs none
of that. :data:`COMMANDS` names each command's module and short help, so the group lists the
commands without importing them and imports a command's module when it is run (or its own
``--help`` is asked for). A Ctrl-C while torch loads is then inside click's handling ("Aborted!",
exit status 1), not a traceback.

To add a command: add a row to :data:`COMMANDS` and write ``cli/<command>.py`` with a function
decorated ``@main.command(name=..., short_help=COMMANDS[name][1])``.
"""

from __future__ import annotations

import importlib

import click

__all__ = ["COMMANDS", "CommandGroup", "main"]

#: Command name -> (module that adds it to :func:`main`, its short help in ``funcattr --help``).
COMMANDS: dict[str, tuple[str, str]] = {
    "concepts": ("funcattr.cli.concepts",
                 "Show the most relevant concepts of a layer, their heatmaps and graph."),
    "evaluate": ("funcattr.cli.evaluate",
                 "Tabulate metrics of explanation methods (on the demo by default)."),
    "explain": ("funcattr.cli.explain",
                "Explain a classifier's predictions: heatmaps, relevance, an HTML report."),
    "list": ("funcattr.cli.listing",
             "Show the composites, attributors, canonizers, colour maps and models."),
    "text": ("funcattr.cli.text",
             "Explain why two sentences are similar (MiniLM, token relevance)."),
}


class CommandGroup(click.Group):
    """A click group whose commands are imported from :data:`COMMANDS` on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(COMMANDS[cmd_name][0])  # adds the command to main
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name)
            if command is None:
                rows.append((name, COMMANDS[name][1]))
            elif not command.hidden:
                rows.append((name, command.get_short_help_str(formatter.width - 6 - len(name))))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(name="funcattr", cls=CommandGroup,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="funcattr", prog_name="funcattr")
def main() -> None:
    """Explain image classifiers with LRP, gradients, SmoothGrad, Integrated Gradients and
    Occlusion (funcattr).

    Start with `funcattr explain`, which explains the built-in demo model on its sample
    images and writes heatmaps and an HTML report to ./funcattr-output.
    """
    from funcattr.allocator import warm_allocator  # imports torch: only when a command runs

    warm_allocator()  # a command line process is ours to tune (see funcattr.allocator)
