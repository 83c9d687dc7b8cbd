"""The `ndop` command line."""
