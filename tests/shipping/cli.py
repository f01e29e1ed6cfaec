"""What the installed ``virtrigaud`` command line offers (the images and the chart run it)."""

from __future__ import annotations

import argparse

from virtrigaud.cli import build_parser


def subcommand_parser(name: str) -> argparse.ArgumentParser | None:
    """The parser of ``virtrigaud NAME``, or None when there is no such subcommand."""
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            found = action.choices.get(name)
            return found if isinstance(found, argparse.ArgumentParser) else None
    return None
