"""One module per technique; each docstring gives the formula, assumptions and source."""
