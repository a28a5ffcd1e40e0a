"""flmctl's subcommands, one module each; :data:`flamepy_core.cli.main.COMMANDS` lists them in order.

To add one: write ``commands/NAME.py`` with ``add_parser(sub)`` that calls
:func:`flamepy_core.cli.common.add_command` (a summary, examples, help on every flag), then add the
module to ``COMMANDS``. Help, shell completion and the CLI reference page pick it up from the parser.
"""
