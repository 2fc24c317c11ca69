"""What goes over the wire, with no threads and no sockets.

Frames and body encoding (``codec``), messages and responses
(``message``), signatures (``signing``), channel templates (``path``),
typed bodies (``convert``, and ``models`` for pydantic's), JSON Schemas
of annotations (``typeschema``), the destination options (``schemas``)
and Redis' glob patterns (``glob``).
"""
