"""``pocketseg serve``: segment for other machines (one GPU box serving a lab's Slicers).

- :mod:`.jobs`: the queue; jobs run N at a time, each in a child process (``python -m pocketseg_core.worker``, as the Slicer modules run theirs).
- :mod:`.app`: the HTTP interface (FastAPI), imported only by ``pocketseg serve``: the server
  packages are an optional extra (``pip install pocketseg-core[server]``).
- The client is :mod:`pocketseg_core.remote` (standard library only).
"""
