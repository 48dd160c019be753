"""Every benchmark, run from the pipeline machine (the station ones through the client).

``gymnast bench <name>`` (``pipeline.cli``):

- ``bridge``, ``safety``: ``station`` (wire latency against a bare ZMQ floor, simulator steps/s;
  e-stop latency during the largest upload, station memory per message)
- ``learning``: ``learning`` (SFT vs RL in imagination; its arms in ``arms``, the real-episode
  budgets in ``budget``, shared evaluations in ``common``, stage reuse in ``reuse``, the report
  and verdict tables in ``report``)
- ``loop``: ``loop`` (one arm), ``fleet`` (``--stations N``)
- ``gpu``: ``gpu``

Scripts (``python -m pipeline.bench.<name>``): ``sim`` (the scripted expert's success against its
noise), ``grpo_memory`` (GRPO's peak memory in a process of its own), ``tiny_build`` (tiny model
build and episode-append costs).
"""
