"""Command-line entry points (the only place nodosum prints)."""
