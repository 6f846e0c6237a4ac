"""``python -m bananastand``: the ``bananastand`` command, run by the interpreter that
runs this package (the supervisor starts its worker processes so, wherever it lives)."""

from bananastand.cli import main

main()
