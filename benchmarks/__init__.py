"""On-demand benchmarks (not tests): each prints JSON and writes results under results/.

``python -m benchmarks --suite quick|full`` runs them all as one suite (:mod:`benchmarks.suite`)
and writes one report (:mod:`benchmarks.report`).
"""
