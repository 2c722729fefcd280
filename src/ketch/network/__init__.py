"""Container networking: drivers behind Protocols (``NetworkDriver``, ``IpamDriver``), the
port mapper and firewall rules, and the embedded DNS resolver. The engine composes them;
nothing here knows about containers beyond addresses, namespaces and names."""
