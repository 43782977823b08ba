"""The inference core every front door calls: a request from its decoded form to its answer."""
