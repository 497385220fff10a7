"""``cos3d serve``: trained runs kept loaded behind an HTTP/JSON API, for the CLI, robots and apps.

Modules (importing this package imports none of them, nor torch):

- :mod:`cos3d.serve.config` — :class:`~cos3d.serve.config.ServeConfig` (the command's flags) and the
  :class:`~cos3d.serve.config.Catalogue` of runs served (named runs and folders of runs);
- :mod:`cos3d.serve.handlers` — what a run answers: request dicts → the engine → JSON dicts / PNG / PLY;
- :mod:`cos3d.serve.executor` — :class:`~cos3d.serve.executor.LocalExecutor`: a bounded LRU of loaded
  runs, reloaded when retrained; :mod:`cos3d.serve.ray_executor` — one Ray Serve deployment per run;
- :mod:`cos3d.serve.app` — the FastAPI routes, token, limits, deadlines, one-line errors;
- :mod:`cos3d.serve.server` — binding, the discovery file, uvicorn; :mod:`cos3d.serve.discovery` — where
  clients (``cos3d query``, :mod:`cos3d.serve.client`) find a running server for a run.
"""
