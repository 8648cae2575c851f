"""``python -m pushforward`` runs the command line."""

from pushforward.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
