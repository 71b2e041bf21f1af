"""``benchmarks/speed.py``'s runs: distillation speed near the hardware limit.

- :mod:`~tgdd_bench.speed.plan`: what is measured (settings, training tasks, the full and quick plans) and
  the real configs they stand for;
- :mod:`~tgdd_bench.speed.analysis`: the analytic side of each (its work) and a measured row;
- :mod:`~tgdd_bench.speed.workers`: the measurements, each in a fresh process of ``speed.py --worker``;
- :mod:`~tgdd_bench.speed.profile`: the ``torch.profiler`` summary of one iteration;
- :mod:`~tgdd_bench.speed.report`: ``speed_<device>.md`` and ``.csv``.
"""
