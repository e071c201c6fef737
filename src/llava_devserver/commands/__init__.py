"""CLI glue, one module per command group; each exposes `register(subparsers)`."""
