"""`vfiotask config show`: the settings in force and where each came from."""

from __future__ import annotations

import argparse

from vfiotask.integrations.cli.output import print_json, table


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config",
        help="show the host-wide defaults from /etc/vfiotask/config.toml",
        description="Show every setting in force and where it came from: default, file (/etc/vfiotask/config.toml "
        "or $VFIOTASK_CONFIG), env, or a command's flag. A bad file is one error (exit 2); for root, a file "
        "another user could change, at any level of its path, is refused (exit 3).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser), required=True)
    show = actions.add_parser("show", help="print the effective settings and their sources")
    show.add_argument("--json", action="store_true", help="print the settings as one JSON object")
    show.set_defaults(handler=run_show)


def run_show(args: argparse.Namespace) -> int:
    from vfiotask.config import SETTINGS, config_path, effective

    values = effective()
    if args.json:
        print_json({"file": str(config_path()), "file_exists": config_path().exists(),
                    "settings": [{"key": v.key, "value": v.value, "source": v.source, "where": v.where or None}
                                 for v in values.values()]})
        return 0
    rows = [(v.key, _show(v.value), v.source + (f" ({v.where})" if v.where else "")) for v in values.values()]
    print(table(["setting", "value", "from"], rows))
    state = "" if config_path().exists() else " (absent: every setting is its default)"
    print(f"\nfile: {config_path()}{state}")
    print("\n".join(f"  {s.key}: {s.help}" for s in SETTINGS))
    return 0


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):  # a table, as TOML writes it inline
        return "{" + ", ".join(f"{key} = {_show(item) if not isinstance(item, str) else repr(item)}"
                               for key, item in value.items()) + "}"
    return str(value)
