"""The HTTP front door: the Flask views, the event-loop fast path, the admin plane, OpenAPI."""
