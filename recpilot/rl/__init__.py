"""The learning loop's library: slates with exact propensities (``slate``), the Q-learning
re-ranking policy, off-policy evaluation and the logged data they read."""
