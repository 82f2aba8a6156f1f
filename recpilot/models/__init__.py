"""Ranking models: training, offline evaluation, the model repository and deployment control."""
