"""The reward joiner: impressions joined with their outcomes into rewards (``python -m services.rl_feedback``)."""
