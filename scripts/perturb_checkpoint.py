"""Kept for old commands: use ``python -m pytest_circuits perturb OUT --layer 23 --scale 0.5``."""
from pytest_circuits.cli import main
raise SystemExit(main(["perturb", *__import__("sys").argv[1:]]))
