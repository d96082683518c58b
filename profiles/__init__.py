"""Shipped YAML data: the GPU catalogue (`gpus.yaml`) and example deployment profiles.

Installed as the package `fitplan.profiles` so `pip install .` carries it; read with
`importlib.resources`, never by path relative to the source tree.
"""
