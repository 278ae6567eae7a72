"""`python -m digits.tools.bench`: see `digits.tools.bench.cli`."""

from digits.tools.bench.cli import main

if __name__ == "__main__":
    main()
