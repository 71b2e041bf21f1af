"""The benchmarks' shared library: what the scripts in ``benchmarks/`` measure with, by concern.

- :mod:`tgdd_bench.flops`: analytic Conv2d/Linear work (MACs by forward hooks, the work of a TGDD iteration
  and of a training step);
- :mod:`tgdd_bench.attainable`: the conv microbenchmark, the attainable rate of that work;
- :mod:`tgdd_bench.machine`: the machine and its meters (wall clock after the device's queue, busy cores,
  peak memory, a description of the machine);
- :mod:`tgdd_bench.fixtures`: random inputs shaped like the real ones (a prepared split, snapshots,
  trajectories), so that no data files are needed;
- :mod:`tgdd_bench.markdown`: report writing (tables and numbers), standard library only;
- :mod:`tgdd_bench.speed`: ``speed.py``'s runs (its plan, workers, analysis and report).

The scripts import it as ``tgdd_bench``: Python puts a script's own folder (``benchmarks/``) first on
``sys.path``, and no script imports another script.
"""
