"""Answers no request: execute must return one response per request."""


class TritonPythonModel:
    def execute(self, requests):
        return []
