"""The compare suite's fixed choices, in a module that imports no torch (the CLI quotes them in its help)."""

ALL_TEXT = ("stdlib-prose", "stdlib-code", "stdlib-mixed", "licenses")
QUICK_TEXT = ("stdlib-prose", "stdlib-code")
QUICK_TOKENS = 1024
QUICK_LENGTHS = (1024,)
QUICK_DEPTHS = (0.0, 0.5, 1.0)
QUICK_MIN_BUDGET = 256  # tokens: at 1K the paper's 1024 keeps every block, and every method equals dense
