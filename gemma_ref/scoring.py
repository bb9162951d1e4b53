"""Scoring: per-token log-probabilities, perplexity, multiple-choice log-likelihoods."""
