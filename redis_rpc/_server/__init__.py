"""The server side: what runs the handlers.

``process`` is the processing of one message, whatever carried it: from
the payload to the commands to send. Around it, the consumers: ``fetch``
runs the loop of list and stream subscribers (one thread each, and their
``workers``), with each transport's ``Source`` (``lists``, ``streams``);
``channels`` feeds every channel subscriber of a broker from one Pub/Sub
connection. ``owed`` carries replies with the next blocking read,
``heartbeat`` keeps consumers that hold messages alive in Redis' eyes, and
``handler`` works out a handler's arguments.
"""
