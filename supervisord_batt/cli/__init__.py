"""The `supervisord-batt` command line (`main`) and its renderings of replies (`status`).

Nothing imports this package: it sits on top of everything else.
"""
