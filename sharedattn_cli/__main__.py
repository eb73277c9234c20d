"""`python -m sharedattn_cli`: the same app as the `sharedattn` console script."""
from .app import main

main()
