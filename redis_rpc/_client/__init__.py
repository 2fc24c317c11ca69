"""The caller side: what ``publish()`` and ``request()`` do.

``request`` builds, signs and sends (``Caller``), and waits for the reply
within the caller's deadline; ``listener`` holds the one reply
subscription of a broker and completes each pending request as its reply
arrives.
"""
