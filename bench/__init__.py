"""The benchmark of issue 6: the bot and the fake GitLab as real processes, figures as ratios.

`python -m bench` starts the fake GitLab (`python -m tests.fakegitlab`), the bot (`python -m bot
serve`) and, for the intake baseline, a bare aiohttp app (`python -m bench.bare`) as separate
processes on 127.0.0.1, drives them from this process or from `wrk`, and prints one table that
is also written to BENCHMARKS.md with the machine it ran on. Every figure is set beside a
baseline measured in the same run, because the machines it runs on are shared and noisy.
"""
