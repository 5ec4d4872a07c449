"""On-demand benchmarks (not tests): each prints JSON and writes results under results/."""
