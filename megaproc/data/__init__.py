"""Datasets and batch sources: Megatron-compatible indexed files (``indexed``), GPT sample indices
(``gpt_dataset``), blending (``blended``), prompt/answer examples (``prompt_answer``), the train /
validation builder (``build``), the built-in corpus (``default_corpus``) and the batch sources the
trainer pulls from (``sources``, ``task_source``, ``classify_source``).  Import the submodules;
this package imports none of them (no package-level import cycles)."""
