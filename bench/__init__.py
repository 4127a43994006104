"""oat_edge.bench — on-device benchmarking of a bundle (``oat-edge bench``, docs/benchmarking.md).

    stats       per-call times -> percentiles per round -> medians across rounds, ratios
    scheduling  blocks and the interleaved, rotated rounds that measure them
    host        what the host is (clocks, cores, memory, versions) and the runtime's cold start
    blocks      the measured variants: modes, FiLM vs baked, switch, naive switch, load, eager
    baking      ``--bake``: background baking measured beside the plain runtime
    threads     ``--tune-threads``: every path at each candidate thread count, the sgemm peak
    run         ``run_benchmark`` (one interleaved run) and ``write_outputs``
    results     the results dict (the JSON file) from the blocks' statistics
    report      markdown and console summary from a results dict
    plots       PNG charts from a results dict
    microbench  ``--micro``: the runtime's hot path (set_mode per kind, infer's own overhead)
    cli         ``oat-edge bench``

A stage after the runtime: it uses the runtime and never the other way round, so a deployment
may leave it out. Importing it is cheap (numpy, torch and matplotlib load inside functions).
"""

DEFAULT_BATCHES = (1, 8, 32)  # batch sizes `oat-edge bench` measures (here, so --help stays light)
