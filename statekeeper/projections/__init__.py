"""Projections: the SQL tables users query, folded from the event log (pure folds, SQL projector, rebuild)."""
