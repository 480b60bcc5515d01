"""Regression tracking: compare against a saved baseline, the history over revisions with change points, backfill and bisect, and the statistics they share."""
