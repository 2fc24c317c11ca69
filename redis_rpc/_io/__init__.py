r"""The I/O layer: the only code that imports redis-py.

``interfaces`` holds the seam, as Protocols: ``Connection`` (sending
commands) and ``Backend`` (a connection that can also serve, with blocking
``Reader``\ s, ``Subscription``\ s and an ``Admin`` for consumer groups).
Two backends implement them side by side: ``server.RedisBackend`` (one
server, or the master Redis Sentinel names, see ``sentinel``) and
``cluster.ClusterBackend``. What they share are parts, not a base class:
the ``pipe`` that batches every thread's commands on one ``link``, the
``reader`` and ``subscription`` connections, ``admin``, the ``commands``
and ``scripts`` they run, ``parsing`` and ``errors``, the one place where
redis-py's exceptions become ours.
"""
