"""Captured sessions as scenarios, replayed and compared; our own runs as captures.

- :mod:`.turns`: a TCP stream cut into what the client sent and what answered it.
- :mod:`.expect`: captured text as templates and regexes (masking, ``--rewrite``,
  strictness).
- :mod:`.convert`: streams to scenario documents (``mailharness pcap2yaml``).
- :mod:`.diff`: replaying them and naming the exchanges that answered otherwise
  (``mailharness replay``).
- :mod:`.pcapwriter`: the harness's own sessions as a pcap file (``run --capture``).

See docs/replay.md.
"""
