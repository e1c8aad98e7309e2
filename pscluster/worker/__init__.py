"""Stateless workers: lease work from the coordinator, pull, compute gradients, push."""
