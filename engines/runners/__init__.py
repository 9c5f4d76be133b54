"""Inference backends behind one runner interface (see `engines.runners.base`)."""
