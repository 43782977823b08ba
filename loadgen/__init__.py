"""The load generator behind `tapeserve bench`: a client of a running server, not server code."""
