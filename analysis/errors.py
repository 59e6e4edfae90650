"""The one error analysis raises for bad input; light to import, so the CLI can catch it cheaply."""


class AnalysisError(Exception):
    """An experiment, run or model that is not there; the message names the flag."""
