"""``python -m videodiff.cli``: the same entry point as the ``videodiff`` command."""

from videodiff.cli import main

main()
