"""CLI subcommands, one module each; see :mod:`cos3d.cli`."""
