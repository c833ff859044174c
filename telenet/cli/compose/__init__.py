"""
``telenet compose``: Docker Compose v2 on a rendered copy of the user's files (docs/compose.md).

- ``source.py``: a compose file read as Compose reads it (YAML 1.2 scalars, ``!reset``,
  ``!override``), with line marks; ``Where``, ``ComposeError``
- ``merge.py``: several ``-f`` files merged as Compose merges them
- ``project.py``: which files, the project's name and directory, ``.env``, profiles
- ``extension.py``: the ``x-telenet`` extension (and Telepresence's ``x-tele``) as attrs values
- ``extparse.py``: the extension read from a file's YAML nodes; ``FILE:LINE: key.path`` errors
- ``extmerge.py``: the files' extension blocks merged, the defaults filled in (``read_extension``)
- ``extcheck.py``: the extension checked against the project (connections, agents, mounts)
- ``mounts.py``: the services' volume entries; which become telemount volumes, read-only or not
- ``render.py``: the renderer: the project, the extension and the facts in, the file to run out
- ``discovery.py``: finding Compose v2 (``docker compose`` or ``docker-compose``), refusing v1
- ``facts.py``: the facts of running connections, read from Docker and their daemons
- ``state.py``: what telenet made for a project (bridges, connections it started, the rendered
  file), recorded in the private directory for a later ``down``, ``stop``, ``quit``, ``status``
- ``session.py``: the connection work: connecting, bridges opened, probed, closed; cleanup
- ``command.py``: ``telenet compose`` itself: files, checks, rendered file, Compose's command line
"""
