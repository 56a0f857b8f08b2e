"""The built-in toy models' data: their weights, corpus, tokenizer and training recipe, shipped inside the package.

``toy-dense`` (Llama) and ``toy-moe`` (Mixtral, 8 experts, top-2) are trained on a synthetic corpus
(`actkit.builtin.corpus`) so that steering, patching and pruning can be shown on real behaviours without any
download: they refuse forbidden requests, continue reviews with the cued sentiment, complete name-mover sentences
and answer A/B questions. Each lives in ``weights/NAME/`` as an ordinary Hugging Face folder that
``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load. Which built-ins exist and where
their folders are is recorded once, in `actkit.models.packaged` (``actkit.load("builtin:toy-dense")``,
``actkit.models.builtin_folder``). See ``README.md`` for the recipe, `actkit.builtin.train` to reproduce them and
`actkit.builtin.evaluate` for what is measured.
"""
