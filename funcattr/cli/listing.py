"""``funcattr list``: what can be chosen by name (composites, attributors, canonizers, colour
maps, models), read from the registries."""

from __future__ import annotations

import re
import textwrap

import click

from funcattr.attribution.registry import ATTRIBUTORS
from funcattr.canonizers import CANONIZERS
from funcattr.cli.canonizers import buildable
from funcattr.cli.group import COMMANDS, main
from funcattr.cli.models import torchvision_names
from funcattr.composites import COMPOSITES
from funcattr.image import CMAPS

__all__ = ["list_command"]

_LIST_WHAT = ("composites", "attributors", "canonizers", "cmaps", "models")


def _first_line(obj: object) -> str:
    lines = (obj.__doc__ or "").strip().splitlines()
    text = lines[0] if lines else ""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")


def _wrapped(text: str) -> None:
    click.echo(textwrap.fill(text, width=100, initial_indent="  ", subsequent_indent="    "))


@main.command(name="list", short_help=COMMANDS["list"][1])
@click.argument("what", required=False, type=click.Choice(_LIST_WHAT))
def list_command(what: str | None) -> None:
    """Show the registered composites, attributors, canonizers, colour maps and models."""
    sections = [what] if what else list(_LIST_WHAT)
    for section in sections:
        if len(sections) > 1:
            click.echo(f"{section}:")
        if section == "composites":
            for name, cls in COMPOSITES.items():
                click.echo(f"  {name:<28} {_first_line(cls)}")
        elif section == "attributors":
            for name, spec in ATTRIBUTORS.items():
                click.echo(f"  {name:<28} {spec.summary}")
            aliases = [f"{alias} (now {spec.name})" for spec in ATTRIBUTORS.values()
                       for alias in spec.aliases]
            if aliases:
                _wrapped(f"(old names that still work: {', '.join(aliases)})")
        elif section == "canonizers":
            for name, spec in CANONIZERS.items():
                text = _first_line(spec.load())
                if not buildable(spec):
                    text += (f" [needs {', '.join(spec.arguments())}: Python only, "
                             f"funcattr.get_canonizer({name!r}, ...)]")
                click.echo(f"  {name:<28} {text}")
            automatic = [name for name, spec in CANONIZERS.items() if spec.auto]
            _wrapped("(names are case-insensitive and may be written as class names, e.g. "
                     "ResNetCanonizer; --canonizer auto takes the first of "
                     f"{', '.join(automatic)} that fits the model, as "
                     "funcattr.canonizers_for does)")
        elif section == "cmaps":
            for name in CMAPS:
                click.echo(f"  {name:<28} {CMAPS[name].source}")
            click.echo("  (or a colour-map spec such as '00f,80:fff,f00')")
        elif section == "models":
            click.echo(f"  {'demo':<28} the built-in shape classifier (default)")
            _wrapped("torchvision (with --weights FILE): " + ", ".join(torchvision_names()))
            click.echo("  or MODULE:FACTORY / FILE.py:FACTORY returning a torch.nn.Module")
            click.echo("  or FILE.pt holding a model saved with torch.save(model) (with "
                       "--allow-pickle)")
        if len(sections) > 1 and section != sections[-1]:
            click.echo()
