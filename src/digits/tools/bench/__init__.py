"""`make bench`: what the pipeline costs over plain Keras, and what pruning buys a sweep.

    python -m digits.tools.bench overhead [--repeats 4]     # train stage vs bench/bare_keras.py
    python -m digits.tools.bench sweep [--workers 2]        # TPE + pruning vs random, no pruning
    python -m digits.tools.bench speed [--only 10s]         # ladder rungs vs keras-io's convnet

Real data (`data/processed`, `make repro` first). Results: `reports/bench/*.json` and `.md`.

- `overhead`: the train stage against bench/bare_keras.py, alternating pairs;
- `sweep_efficiency`: TPE with pruning against random search, trials and epochs to a target;
- `speed`: ladder rungs against keras-io's mnist_convnet, with FLOPs;
- `timing`: timing a command, medians; `cli`: the command line and the results files.
"""

from digits.tools.bench.cli import main

__all__ = ["main"]
