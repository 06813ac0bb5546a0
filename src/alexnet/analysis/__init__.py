"""Analyses of a trained model: the report, conv1 kernel pictures, fc7 retrieval, plots.

Sub-modules import matplotlib and friends lazily; importing this package is cheap.
"""
