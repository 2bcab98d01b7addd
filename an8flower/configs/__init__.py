"""Run configurations shipped with the package: ``an8flower leaderboard --config published``.

``published.toml`` is the published board's configuration (its results and report are in the
repository's ``docs/leaderboard/``); ``published-gpu.toml`` is the same run without its CPU cuts.
Resolved by :func:`an8flower.eval.config.resolve_config_path`.
"""
