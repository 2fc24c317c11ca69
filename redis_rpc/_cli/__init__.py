"""The ``redis-rpc`` command and ``App``: serving an application as a process.

``app`` runs a broker as a service (hooks, signals, graceful shutdown);
``command`` parses the command line (``run``, ``ping``, ``health``);
``target`` loads ``package.module:attr``; ``worker`` serves it in one
process; ``supervisor`` runs several workers and restarts them.
"""
