"""actkit inside vLLM: a ``vllm.general_plugins`` plugin that steers each request's own token rows from
``SamplingParams.extra_args["steer"]``, with the request format of ``actkit serve``. Needs the ``vllm`` extra."""
