"""``actkit serve``: an OpenAI-compatible server with per-request steering (an application over the core's
interventions and the steer pillar's vectors). Needs the ``serve`` extra: ``pip install 'actkit[serve]'``."""
