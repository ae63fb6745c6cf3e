"""Sweep orchestration: Ray Tune wiring, MLflow tracking, Pareto frontier, Parquet results."""
