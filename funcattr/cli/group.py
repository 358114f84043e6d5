"""The ``funcattr`` command group; each command module adds its command to :func:`main`."""

from __future__ import annotations

import click

from funcattr.allocator import warm_allocator

__all__ = ["main"]


@click.group(name="funcattr", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="funcattr", prog_name="funcattr")
def main() -> None:
    """Explain image classifiers with LRP, gradients, SmoothGrad, Integrated Gradients and
    Occlusion (funcattr).

    Start with `funcattr explain`, which explains the built-in demo model on its sample
    images and writes heatmaps and an HTML report to ./funcattr-output.
    """
    warm_allocator()  # a command line process is ours to tune (see funcattr.allocator)
