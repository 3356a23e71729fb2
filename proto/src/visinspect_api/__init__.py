"""Contracts shared by training, serving and clients of the visual inspection service."""
