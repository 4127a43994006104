"""``oat-edge reproduce``: the OAT paper's figures measured on digits (suite.py: what is trained,
runner.py: resumable training and evaluation in worker processes, report.py: results.json →
report.md and PNGs, cli.py: the command). docs/reproduction.md explains every figure."""
