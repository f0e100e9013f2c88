"""``onnxopt passes``: every pass with its options, defaults, help and capabilities."""

from __future__ import annotations

import click

from onnxopt.cli.common import emit_json, stdout_console, verbosity_options


@click.command(help="List the passes, their options and what they need.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@verbosity_options
def command(as_json):
    from onnxopt.registry import describe_passes

    rows = describe_passes()
    if as_json:
        emit_json(rows)
        return
    from rich.table import Table

    console = stdout_console()
    for row in rows:
        aliases = f" (alias {', '.join(row['aliases'])})" if row["aliases"] else ""
        console.print(f"[bold]{row['name']}[/bold]{aliases} — {row['summary']}")
        console.print(f"  {row['capability']}")
        if row["options"]:
            table = Table(show_header=True, box=None, padding=(0, 2))
            for column in ("option", "type", "default", "help"):
                table.add_column(column)
            for opt in row["options"]:
                table.add_row(opt["name"], opt["type"], repr(opt["default"]), opt["help"])
            console.print(table)
        console.print()
