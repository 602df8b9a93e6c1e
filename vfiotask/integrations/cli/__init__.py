"""The `vfiotask` command: a thin layer of argparse over the library."""
