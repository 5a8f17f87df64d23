"""The ``worldland`` and ``worldland-provider`` commands: thin adapters over the packages below.

May import anything; nothing imports it. ``worldland.cli.entry`` holds the console-script entry points.
"""
