"""Recipes: ready ``ModelTask``s for common data, built only from layers the engine attributes exactly.

- ``attribution.recipes.text``: ``train_tokenizer`` (BPE, deterministic JSON bytes),
  ``load_tokenizer``, ``encode_texts``, ``TextTransformer`` and ``text_transformer_task``.
- ``attribution.recipes.image``: ``ImagePolicy``, ``decode_images`` (Pillow), ``SmallCNN`` and
  ``image_cnn_task``.
- ``attribution.recipes.hf``: ``hf_classifier_task`` (a local Hugging Face sequence classifier),
  ``hf_tokenizer`` and ``hf_encode_texts``.
- ``attribution.recipes.mlp``: ``mlp_task`` (today's ``ModelSpec`` MLP; forward takes ``features``).

Import the submodule you need: this package imports nothing itself, so ``attribution`` keeps
importing with torch and numpy alone (tokenizers, Pillow and transformers load on first use).
"""
