"""Command-line tools (thin: parse arguments, call the library, print)."""
