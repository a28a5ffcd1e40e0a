"""``flmctl``: Flame's command-line tool, reimplemented over flamepy's client.

It reads the same ``flame.yaml`` and the same application YAML as Flame's own ``flmctl`` (see
:mod:`flamepy_core.cli.appspec`), so a user's files and habits carry over, and with nothing configured it
talks to the embedded local server, starting it when needed.
"""
